// The verifier registry (built-ins added on first use), the weighted reward function and the
// context a config implies.
#include "moetron/rewards/reward.h"

#include <cmath>
#include <map>
#include <mutex>

#include "builtin.h"
#include "moetron/core/error.h"

namespace moetron::rewards {
namespace {

// A function-local static: built-ins are present whenever the registry is, whatever the
// static-initialisation order or which objects of the static library the linker kept.
struct Registry {
  Registry() { detail::add_builtin_verifiers(factories); }
  std::mutex mutex;
  std::map<std::string, VerifierFactory> factories;
};

Registry& registry() {
  static Registry r;
  return r;
}

std::string join(const std::vector<std::string>& names) {
  std::string out;
  for (const auto& n : names) out += (out.empty() ? "" : ", ") + n;
  return out;
}

}  // namespace

void register_verifier(const std::string& name, VerifierFactory factory) {
  MOETRON_CHECK(!name.empty(), "register_verifier: the name is empty");
  MOETRON_CHECK(factory != nullptr, "register_verifier: no factory for '", name, "'");
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  r.factories[name] = std::move(factory);
}

std::vector<std::string> verifier_names() {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  std::vector<std::string> names;
  for (const auto& entry : r.factories) names.push_back(entry.first);
  return names;  // std::map: sorted
}

std::unique_ptr<Verifier> make_verifier(const std::string& name, const RewardContext& context) {
  VerifierFactory factory;
  {
    Registry& r = registry();
    std::lock_guard<std::mutex> lock(r.mutex);
    auto it = r.factories.find(name);
    if (it != r.factories.end()) factory = it->second;
  }
  if (!factory) {
    throw Error(ErrorKind::kConfig,
                str_cat("unknown reward verifier '", name,
                        "' (rl.rewards[].name); known: ", join(verifier_names())));
  }
  auto verifier = factory(context);
  MOETRON_CHECK(verifier != nullptr, "the factory of reward verifier '", name,
                "' returned nothing");
  return verifier;
}

RewardFunction::RewardFunction(const std::vector<config::RewardTerm>& terms,
                               const RewardContext& context) {
  for (size_t i = 0; i < terms.size(); ++i) {
    MOETRON_CHECK_CONFIG(std::isfinite(terms[i].weight), "rl.rewards[", i, "].weight ('",
                         terms[i].name, "') must be a finite number, got ", terms[i].weight);
    terms_.emplace_back(make_verifier(terms[i].name, context), terms[i].weight);
  }
}

Score RewardFunction::score(const Sample& sample) const {
  Score s;
  s.components.reserve(terms_.size());
  for (const auto& [verifier, weight] : terms_) {
    const double value = verifier->score(sample);
    s.total += weight * value;
    s.components.emplace_back(verifier->name(), value);
  }
  return s;
}

std::vector<std::string> RewardFunction::names() const {
  std::vector<std::string> names;
  for (const auto& term : terms_) names.push_back(term.first->name());
  return names;
}

RewardContext context_from_config(const config::Config& cfg) {
  RewardContext c;
  c.think_open = cfg.sft.think_open;
  c.think_close = cfg.sft.think_close;
  c.answer_tags = cfg.rl.r1_zero;
  c.max_new_tokens = cfg.rl.max_new_tokens;
  c.overlong_buffer = cfg.rl.overlong_buffer;
  return c;
}

}  // namespace moetron::rewards
