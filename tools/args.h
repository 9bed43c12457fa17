// A tiny command-line parser for the `sparge` subcommands: `--name value`, `--name=value` and
// boolean `--flag`s, each declared with a help line. Typed getters check ranges and throw
// UsageError with a message naming the option, the expected value and what was given.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace sparge::cli {

// A caller mistake on the command line; main() prints it and exits with status 2.
class UsageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class ArgParser {
 public:
  ArgParser(std::string command, std::string summary);

  // An option taking a value; `fallback` is used when it is absent ("" = no default).
  void add(const std::string& name, const std::string& value_name, const std::string& fallback,
           const std::string& help);
  void add_flag(const std::string& name, const std::string& help);

  // Parses argv[first..argc). Throws UsageError on an unknown option or a missing value.
  // Returns false when --help / -h was given (the caller prints help() and exits 0).
  bool parse(int argc, char** argv, int first);
  std::string help() const;

  bool given(const std::string& name) const;  // present on the command line
  bool flag(const std::string& name) const;
  std::string str(const std::string& name) const;
  int64_t integer(const std::string& name, int64_t lo, int64_t hi) const;
  // A number in [lo, hi], or in (lo, hi] when lo_open.
  double real(const std::string& name, double lo, double hi, bool lo_open = false) const;
  // One of `choices`, e.g. --workload video|llm|random.
  std::string choice(const std::string& name, const std::vector<std::string>& choices) const;
  // A comma-separated list of `count` integers in [lo, hi], e.g. --grid 8,16,16.
  std::vector<int64_t> int_list(const std::string& name, size_t count, int64_t lo,
                                int64_t hi) const;
  // A comma-separated list of reals in [lo, hi] / (lo, hi] (any length >= 1).
  std::vector<double> real_list(const std::string& name, double lo, double hi,
                                bool lo_open = false) const;

 private:
  struct Option {
    std::string name, value_name, fallback, help, value;
    bool is_flag = false, present = false;
  };
  const Option& find(const std::string& name) const;
  Option* lookup(const std::string& name);

  std::string command_, summary_;
  std::vector<Option> options_;
};

}  // namespace sparge::cli
