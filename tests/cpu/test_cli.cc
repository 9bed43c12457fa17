// The `sparge` command line (tools/): help texts, usage errors (message naming the argument and
// exit status 2), and that each subcommand does its job on a tiny workload: `mask` writes a
// well-formed PGM/PNG, `demo` and `bench` report sparsity and errors, `bench --jsonl` writes the
// docs/bench-schema.md fields. The binary's path comes from tests/CMakeLists.txt (SPARGE_CLI_PATH).
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <vector>

namespace {

struct RunResult {
  int exit_code = -1;
  std::string output;  // stdout and stderr together
};

RunResult run_cli(const std::string& args) {
#ifndef SPARGE_CLI_PATH
  (void)args;
  return {};
#else
  const std::string cmd = std::string("\"") + SPARGE_CLI_PATH + "\" " + args + " 2>&1";
  RunResult r;
  std::FILE* pipe = popen(cmd.c_str(), "r");
  if (pipe == nullptr) return r;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), pipe)) > 0) r.output.append(buf, n);
  const int status = pclose(pipe);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
#endif
}

class Cli : public ::testing::Test {
 protected:
  void SetUp() override {
#ifndef SPARGE_CLI_PATH
    GTEST_SKIP() << "built without the sparge command line (SPARGE_BUILD_TOOLS=OFF)";
#endif
  }
  std::string temp_path(const std::string& name) { return ::testing::TempDir() + name; }
};

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

constexpr const char* kTiny = "--grid 2,8,16 --heads 2 --head-dim 32";

TEST_F(Cli, TopLevelHelpListsSubcommands) {
  const RunResult r = run_cli("--help");
  EXPECT_EQ(r.exit_code, 0);
  for (const char* sub : {"demo", "bench", "mask", "stats", "tune"})
    EXPECT_NE(r.output.find(std::string("  ") + sub), std::string::npos) << sub << "\n" << r.output;
}

TEST_F(Cli, EverySubcommandHasHelp) {
  for (const std::string sub : {"demo", "bench", "mask", "stats", "tune"}) {
    const RunResult r = run_cli(sub + " --help");
    EXPECT_EQ(r.exit_code, 0) << sub;
    EXPECT_NE(r.output.find("usage: sparge " + sub), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("--workload"), std::string::npos) << r.output;
  }
}

TEST_F(Cli, UnknownSubcommandListsTheValidOnes) {
  const RunResult r = run_cli("frobnicate");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.output.find("unknown subcommand 'frobnicate'"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("demo, bench, mask, stats, tune"), std::string::npos) << r.output;
}

TEST_F(Cli, BadArgumentsNameTheArgument) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"demo --heads 0", "--heads must be an integer in [1, 128], got '0'"},
      {"demo --cdf 1.5", "--cdf must be a number in (0, 1], got '1.5'"},
      {"mask --grid 4,4", "--grid must be 3 comma-separated integers"},
      {"bench --workloads video,chess",
       "--workloads must list names from video, llm, random, got 'chess'"},
      {"demo --bogus 3", "unknown option --bogus"},
      {"demo --workload music", "--workload must be one of video, llm, random, got 'music'"},
      {"stats --heads 4 --kv-heads 3 --workload llm", "--kv-heads must divide --heads (4), got 3"},
      {"mask --heads 2 --head 5", "--head must be an integer in [0, 1], got '5'"},
      {"demo --threads", "--threads needs a value"},
      {"demo --cdf 0.9 --topk 0.5", "give --cdf or --topk, not both"},
      {"tune", "--target-error E in (0, 1) is required"},
      {"demo --quant fp4", "--quant must be one of none, int8_fp8, int8, got 'fp4'"},
      {"demo --estimate rows", "--estimate must be one of pooled, sampled_rows, auto, got 'rows'"},
  };
  for (const auto& [args, message] : cases) {
    const RunResult r = run_cli(args);
    EXPECT_EQ(r.exit_code, 2) << args << "\n" << r.output;
    EXPECT_NE(r.output.find(message), std::string::npos) << args << "\n" << r.output;
  }
}

TEST_F(Cli, MaskWritesAValidPgm) {
  const std::string path = temp_path("sparge_cli_mask.pgm");
  std::remove(path.c_str());
  const RunResult r =
      run_cli(std::string("mask ") + kTiny + " --compare --scale 2 --pgm --out " + path);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const std::string data = read_file(path);
  std::istringstream header(data);
  std::string magic;
  int width = 0, height = 0, maxval = 0;
  header >> magic >> width >> height >> maxval;
  ASSERT_EQ(magic, "P5");
  EXPECT_EQ(maxval, 255);
  // 256 tokens: 2 query blocks x 4 key blocks per picture, two pictures with a 1-tile gap.
  EXPECT_EQ(width, (4 + 1 + 4) * 2);
  EXPECT_EQ(height, 2 * 2);
  const size_t pixels_at = static_cast<size_t>(header.tellg()) + 1;  // one whitespace byte
  ASSERT_EQ(data.size(), pixels_at + size_t(width) * size_t(height));
  std::set<unsigned char> values(data.begin() + pixels_at, data.end());
  for (unsigned char v : values) EXPECT_TRUE(v == 0 || v == 96 || v == 160 || v == 255) << int(v);
  EXPECT_TRUE(values.count(255)) << "no computed tile drawn";
  EXPECT_NE(r.output.find("row-major"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("Hilbert"), std::string::npos) << r.output;
}

TEST_F(Cli, TuneReportsEveryHeadAndWritesAPlan) {
  const std::string path = temp_path("sparge_cli_plan.json");
  std::remove(path.c_str());
  const RunResult r =
      run_cli(std::string("tune ") + kTiny + " --target-error 0.05 --sim 0.3 --out " + path);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  for (const char* head : {"head 0: TopCdf ", "head 1: TopCdf "})
    EXPECT_NE(r.output.find(head), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("est. rel L1"), std::string::npos) << r.output;
  // The format sparge.TunePlan.load reads (tests/python/test_tune.py checks the loader).
  const std::string plan = read_file(path);
  for (const char* field :
       {"\"format\": \"sparge-tune-plan\"", "\"version\": 1", "\"target_error\": 0.05",
        "\"estimate\": \"sampled_rows\"", "\"sample_rows\": 16",
        "\"layers\": {\"video-grid\": ", "\"calls\": 1", "\"fallbacks\": {}"})
    EXPECT_NE(plan.find(field), std::string::npos) << field << "\n" << plan;
  const size_t at = plan.find("\"cdf_threshold\": [");
  ASSERT_NE(at, std::string::npos) << plan;
  const size_t first = plan.find('[', at) + 1;
  std::string list = plan.substr(first, plan.find(']', first) - first);
  std::replace(list.begin(), list.end(), ',', ' ');
  std::istringstream values(list);
  std::vector<double> masses;
  for (double tau; values >> tau;) masses.push_back(tau);
  ASSERT_EQ(masses.size(), 2u) << plan;  // one per query head
  for (double tau : masses) {
    EXPECT_GT(tau, 0.0);
    EXPECT_LE(tau, 1.0);
  }
}

TEST_F(Cli, MaskWritesPngWhenAvailable) {
  const std::string path = temp_path("sparge_cli_mask.png");
  std::remove(path.c_str());
  const RunResult r = run_cli(std::string("mask ") + kTiny + " --out " + path);
  if (r.exit_code == 2 && r.output.find("no libpng") != std::string::npos)
    GTEST_SKIP() << "built without libpng";
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const std::string data = read_file(path);
  ASSERT_GE(data.size(), 8u);
  EXPECT_EQ(data.substr(0, 8), std::string("\x89PNG\r\n\x1a\n", 8));
}

TEST_F(Cli, DemoReportsSparsityAndAccuracy) {
  const RunResult r = run_cli(std::string("demo ") + kTiny + " --repeats 1");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  for (const char* field :
       {"dense", "sparse", "speedup", "sparsity", "PV skip", "rel L1", "cosine", "[5/5]"})
    EXPECT_NE(r.output.find(field), std::string::npos) << field << "\n" << r.output;
  EXPECT_EQ(r.output.find("nan"), std::string::npos) << r.output;
}

TEST_F(Cli, BenchWritesSchemaFields) {
  const std::string path = temp_path("sparge_cli_bench.jsonl");
  std::remove(path.c_str());
  const RunResult r =
      run_cli(std::string("bench ") + kTiny +
              " --workloads video,random --tokens 200 --cdf 0.9,0.99 --repeats 1 --jsonl " + path);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  std::istringstream lines(read_file(path));
  int count = 0;
  for (std::string line; std::getline(lines, line); ++count)
    for (const char* key :
         {"\"date\"", "\"device\"", "\"commit\"", "\"impl\"", "\"workload\"", "\"dtype\"",
          "\"head_dim\"", "\"batch\"", "\"heads_q\"", "\"heads_kv\"", "\"seq_q\"", "\"seq_k\"",
          "\"causal\"", "\"sparsity\"", "\"ms\"", "\"tops\"", "\"rel_l1\"", "\"cos_sim\""})
      EXPECT_NE(line.find(key), std::string::npos) << key << " missing in " << line;
  EXPECT_EQ(count, 2 * 3) << "a dense line and two sweep lines per workload";
}

// --quant runs Stage 2 in a quantized mode (the CPU emulation) and says so: the sparse line's
// error grows (int8_fp8's FP8 P·V) while the dense baseline stays exact, and the records name it.
TEST_F(Cli, BenchQuantModeIsRecordedAndChangesOnlyTheSparseRuns) {
  const auto bench = [&](const std::string& quant) {
    const std::string path = temp_path("sparge_cli_bench_" + quant + ".jsonl");
    std::remove(path.c_str());
    const RunResult r = run_cli(std::string("bench ") + kTiny +
                                " --workloads random --tokens 256 --cdf 1 --sim 1 --pv inf "
                                "--repeats 1 --quant " + quant + " --jsonl " + path);
    EXPECT_EQ(r.exit_code, 0) << r.output;
    std::vector<std::string> lines;
    std::istringstream in(read_file(path));
    for (std::string line; std::getline(in, line);) lines.push_back(line);
    return lines;
  };
  const auto rel_l1 = [](const std::string& line) {
    const std::size_t at = line.find("\"rel_l1\": ");
    return at == std::string::npos ? -1.0 : std::stod(line.substr(at + 10));
  };
  const std::vector<std::string> exact = bench("none"), fp8 = bench("int8_fp8");
  ASSERT_EQ(exact.size(), 2u);
  ASSERT_EQ(fp8.size(), 2u);
  EXPECT_NE(fp8[0].find("\"quant\": \"none\""), std::string::npos) << fp8[0];  // the dense line
  EXPECT_NE(fp8[1].find("\"quant\": \"int8_fp8\""), std::string::npos) << fp8[1];
  EXPECT_NE(fp8[1].find("sparge-cpu-quant"), std::string::npos) << fp8[1];
  EXPECT_DOUBLE_EQ(rel_l1(fp8[0]), rel_l1(exact[0]));
  // Nothing skipped: exact is rounding only, int8_fp8 adds its quantization (about 0.03).
  EXPECT_LT(rel_l1(exact[1]), 1e-5) << exact[1];
  EXPECT_GT(rel_l1(fp8[1]), 1e-2) << fp8[1];
}

}  // namespace
