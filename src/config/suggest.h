// "Did you mean ...?": the nearest valid key or choice for a misspelt one, by edit distance.
#pragma once

#include <string>
#include <vector>

namespace moetron::config::detail {

// Levenshtein distance (insert, delete, substitute, and swap of two neighbours).
size_t edit_distance(const std::string& a, const std::string& b);

// The candidate closest to `word`, or "" when none is close enough to be a plausible typo
// (distance at most max(2, |word| / 3)).
std::string nearest(const std::string& word, const std::vector<std::string>& candidates);

}  // namespace moetron::config::detail
