// Entry points of the `sparge` subcommands (one file each). argv[1] is the subcommand name;
// options start at argv[2]. They throw UsageError for bad arguments.
#pragma once

namespace sparge::cli {

int run_demo(int argc, char** argv);
int run_bench(int argc, char** argv);
int run_mask(int argc, char** argv);
int run_stats(int argc, char** argv);
int run_tune(int argc, char** argv);

}  // namespace sparge::cli
