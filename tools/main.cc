// The `sparge` command line: `sparge <subcommand> [options]`, each subcommand with --help.
// Usage errors print a message naming the argument and exit with status 2; failures of the
// library exit with status 1.
#include <cstdio>
#include <cstring>
#include <exception>
#include <string>

#include "args.h"
#include "commands.h"
#include "sparge/sparge.h"

namespace {

struct Command {
  const char* name;
  int (*run)(int argc, char** argv);
  const char* summary;
};

const Command kCommands[] = {
    {"demo", sparge::cli::run_demo, "dense vs sparse attention on a video-like workload"},
    {"bench", sparge::cli::run_bench, "CPU timing of dense vs sparse over sparsities/workloads"},
    {"mask", sparge::cli::run_mask, "picture of a predicted block mask (PNG or PGM)"},
    {"stats", sparge::cli::run_stats, "attention statistics of a workload (docs/workloads.md)"},
    {"tune", sparge::cli::run_tune, "per-head TopCdf masses for an error target; a tune plan"},
};

void print_usage(std::FILE* out) {
  std::fprintf(out, "usage: sparge <subcommand> [options]   (sparge <subcommand> --help)\n\n");
  std::fprintf(out, "SpargeAttn block-sparse attention, CPU command line.\n\nsubcommands:\n");
  for (const Command& c : kCommands) std::fprintf(out, "  %-8s %s\n", c.name, c.summary);
  std::fprintf(out, "\n%s\n", sparge::build_info().c_str());
}

std::string command_list() {
  std::string s;
  for (const Command& c : kCommands) s += (s.empty() ? "" : ", ") + std::string(c.name);
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    print_usage(stdout);
    return 0;
  }
  const std::string sub = argv[1];
  if (sub == "--help" || sub == "-h" || sub == "help") {
    print_usage(stdout);
    return 0;
  }
  for (const Command& c : kCommands) {
    if (sub != c.name) continue;
    try {
      return c.run(argc, argv);
    } catch (const sparge::cli::UsageError& e) {
      std::fprintf(stderr, "sparge %s: %s\n", c.name, e.what());
      return 2;
    } catch (const std::exception& e) {
      std::fprintf(stderr, "sparge %s: error: %s\n", c.name, e.what());
      return 1;
    }
  }
  std::fprintf(stderr, "sparge: unknown subcommand '%s'; valid subcommands: %s\n", sub.c_str(),
               command_list().c_str());
  return 2;
}
