// libFuzzer target: the command line's argument parser (tools/args.h).
//
// The input is an argv split on NUL bytes. A parser declared like the subcommands' (valued
// options with and without defaults, flags) parses it, then every typed getter runs on every
// option. UsageError is the expected answer to bad input; a crash, a sanitizer report or any
// other exception escaping is a finding (main() would not print it as a usage message).
#include <cstdint>
#include <string>
#include <vector>

#include "args.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::vector<std::string> words(1, "sparge");
  std::string cur;
  for (size_t i = 0; i < size; ++i) {
    if (data[i] == 0) {
      words.push_back(cur);
      cur.clear();
    } else {
      cur += static_cast<char>(data[i]);
    }
  }
  words.push_back(cur);
  std::vector<char*> argv;
  for (std::string& w : words) argv.push_back(w.data());
  argv.push_back(nullptr);

  sparge::cli::ArgParser p("sparge fuzz", "the options of the subcommands, in small");
  p.add("seq", "N", "4096", "tokens");
  p.add("grid", "T,H,W", "", "video grid");
  p.add("topk", "F", "0.5", "fraction");
  p.add("sparsity", "LIST", "0.5,0.75", "sparsities");
  p.add("workload", "NAME", "video", "workload");
  p.add("out", "PATH", "", "output file");
  p.add_flag("causal", "causal attention");
  p.add_flag("json", "JSON output");
  try {
    if (!p.parse(static_cast<int>(words.size()), argv.data(), 1)) {
      (void)p.help();
      return 0;
    }
  } catch (const sparge::cli::UsageError&) {
    return 0;
  }
  // Each getter on its own: one UsageError must not hide the next getter's behaviour.
  const auto run = [](auto&& getter) {
    try {
      getter();
    } catch (const sparge::cli::UsageError&) {
    }
  };
  run([&] { (void)p.integer("seq", 1, int64_t{1} << 40); });
  run([&] { (void)p.integer("seq", INT64_MIN, INT64_MAX); });
  run([&] { (void)p.int_list("grid", 3, 1, 4096); });
  run([&] { (void)p.real("topk", 0.0, 1.0, true); });
  run([&] { (void)p.real("topk", -1e300, 1e300); });
  run([&] { (void)p.real_list("sparsity", 0.0, 1.0); });
  run([&] { (void)p.choice("workload", {"video", "llm", "random"}); });
  run([&] { (void)p.str("out"); });
  run([&] { (void)p.given("out"); });
  run([&] { (void)p.flag("causal"); });
  run([&] { (void)p.flag("json"); });
  return 0;
}
