// Tokenizer encode throughput: bench_tokenizer SPEC TEXT_FILE [threads]. Encodes every line of
// TEXT_FILE (cold word cache, then warm) and prints MB/s and tokens/s. Not a test.
#include <chrono>
#include <cstdio>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "moetron/core/error.h"
#include "moetron/data/tokenizer.h"

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s SPEC TEXT_FILE [threads]\n", argv[0]);
    return 2;
  }
  try {
    auto tok = moetron::data::load_tokenizer(argv[1]);
    std::ifstream f(argv[2]);
    std::vector<std::string> lines;
    size_t bytes = 0;
    for (std::string line; std::getline(f, line);) {
      bytes += line.size() + 1;
      lines.push_back(line + "\n");
    }
    int threads = argc > 3 ? std::stoi(argv[3]) : 1;
    for (const char* pass : {"cold", "warm"}) {
      auto t0 = std::chrono::steady_clock::now();
      std::vector<size_t> counts(threads, 0);
      std::vector<std::thread> pool;
      for (int t = 0; t < threads; ++t) {
        pool.emplace_back([&, t] {
          for (size_t i = t; i < lines.size(); i += threads) {
            counts[t] += tok->encode(lines[i], false).size();
          }
        });
      }
      for (auto& th : pool) th.join();
      double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      size_t tokens = 0;
      for (size_t c : counts) tokens += c;
      std::printf("%s %s: %.2f MB in %.3f s, %zu tokens: %.2f MB/s, %.0f tokens/s (%d thread%s)\n",
                  tok->name().c_str(), pass, bytes / 1e6, s, tokens, bytes / 1e6 / s, tokens / s,
                  threads, threads == 1 ? "" : "s");
    }
  } catch (const moetron::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
