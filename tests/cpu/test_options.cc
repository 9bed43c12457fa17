// The option list (include/sparge/option_list.h) seen from every C++ layer: the run-time table
// equals SparseOptions{}, the enum names round-trip, the C ABI defaults are the C++ ones
// (test_c_api.cc), and the command line shows and uses the same defaults. The Python side is
// tests/python/test_options.py.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <set>
#include <sstream>
#include <string>

#include "sparge/sparge.h"

namespace sparge {
namespace {

using ::testing::HasSubstr;

TEST(Options, TableListsEveryFieldWithItsDefault) {
  const SparseOptions d;
  std::set<std::string> names;
  for (const OptionInfo& o : option_table()) {
    EXPECT_TRUE(names.insert(o.name).second) << "duplicate option " << o.name;
    EXPECT_NE(std::string(o.doc), "") << o.name;
  }
  const auto value = [](const char* name) {
    for (const OptionInfo& o : option_table())
      if (std::string(o.name) == name) return o.default_value;
    ADD_FAILURE() << "no option " << name;
    return std::nan("");
  };
  EXPECT_EQ(names.size(), 17u);
  EXPECT_EQ(float(value("scale")), d.scale);
  EXPECT_EQ(value("causal"), d.causal ? 1.0 : 0.0);
  EXPECT_EQ(value("causal_align"), int(d.causal_align));
  EXPECT_EQ(float(value("sim_threshold")), d.sim_threshold.value);
  EXPECT_EQ(value("sim_threshold"), 0.1);  // the shortest decimal of the float default
  EXPECT_EQ(value("select"), int(d.select));
  EXPECT_EQ(float(value("select_value")), d.select_value.value);
  EXPECT_EQ(value("estimate"), int(d.estimate));
  // Sampled rows at prefill, the pooled map at decode steps (docs/method.md, "The defaults").
  EXPECT_EQ(d.estimate, EstimateMode::kAuto);
  EXPECT_EQ(value("sample_rows"), d.sample_rows);
  EXPECT_EQ(float(value("target_error")), d.target_error);
  EXPECT_EQ(d.target_error, 0.0f);  // off unless asked
  EXPECT_EQ(value("attention_sink"), d.attention_sink ? 1.0 : 0.0);
  EXPECT_EQ(float(value("pv_threshold")), d.pv_threshold.value);
  EXPECT_EQ(value("pv_group_rows"), d.pv_group_rows);
  EXPECT_EQ(value("block_q"), d.block_q);
  EXPECT_EQ(value("block_k"), d.block_k);
  EXPECT_EQ(value("quant"), int(d.quant));
  EXPECT_EQ(value("window_left"), d.window_left);
  EXPECT_EQ(value("window_right"), d.window_right);
  EXPECT_EQ(d.window_left, -1);  // no window unless asked
  EXPECT_EQ(d.window_right, -1);
}

template <typename E>
void expect_round_trip(const std::vector<const char*>& names) {
  ASSERT_FALSE(names.empty());
  for (size_t code = 0; code < names.size(); ++code) {
    E parsed{};
    ASSERT_TRUE(parse_enum(names[code], &parsed)) << names[code];
    EXPECT_EQ(static_cast<size_t>(parsed), code);
    EXPECT_STREQ(enum_name(parsed), names[code]);
  }
  E untouched = static_cast<E>(0);
  EXPECT_FALSE(parse_enum("no such name", &untouched));
  EXPECT_EQ(enum_name(static_cast<E>(names.size())), nullptr);
}

TEST(Options, EnumNamesRoundTrip) {
  for (const OptionInfo& o : option_table()) {
    if (std::string(o.kind) != "enum") continue;
    const std::string type = o.enum_type;
    if (type == "CausalAlign") expect_round_trip<CausalAlign>(o.choices);
    else if (type == "SelectMode") expect_round_trip<SelectMode>(o.choices);
    else if (type == "EstimateMode") expect_round_trip<EstimateMode>(o.choices);
    else if (type == "QuantMode") expect_round_trip<QuantMode>(o.choices);
    else ADD_FAILURE() << "enum type " << type << " has no round-trip check";
  }
  expect_round_trip<Backend>(backend_names());
}

#ifdef SPARGE_CLI_PATH
std::string cli_help(const std::string& command) {
  const std::string cmd = std::string("\"") + SPARGE_CLI_PATH + "\" " + command + " --help 2>&1";
  std::string out;
  std::FILE* pipe = popen(cmd.c_str(), "r");
  if (pipe == nullptr) return out;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), pipe)) > 0) out.append(buf, n);
  pclose(pipe);
  return out;
}

std::string text(float x) {
  std::ostringstream os;
  os << x;
  return os.str();
}

// The help line of one option, e.g. "  --pv L   pv_threshold ... (default 50)".
std::string help_line(const std::string& help, const std::string& flag) {
  std::istringstream in(help);
  for (std::string line; std::getline(in, line);)
    if (line.find(flag + " ") != std::string::npos) return line;
  return "";
}

TEST(Options, CommandLineShowsTheSameDefaults) {
  const SparseOptions d;
  ASSERT_EQ(d.select, SelectMode::kTopCdf) << "the CLI's --cdf default assumes TopCdf";
  for (const char* command : {"demo", "mask", "stats"}) {
    const std::string help = cli_help(command);
    const auto shows = [&](const std::string& flag, const std::string& value) {
      EXPECT_THAT(help_line(help, flag), HasSubstr("(default " + value + ")"))
          << "sparge " << command << " " << flag;
    };
    shows("--sim", text(d.sim_threshold.value));
    shows("--cdf", text(d.select_value.value));
    shows("--pv", text(d.pv_threshold.value));
    shows("--estimate", enum_name(d.estimate));
    shows("--sample-rows", std::to_string(d.sample_rows));
    shows("--target-error", text(d.target_error));
    shows("--block-q", std::to_string(d.block_q));
    shows("--block-k", std::to_string(d.block_k));
  }
}
#endif

}  // namespace
}  // namespace sparge
