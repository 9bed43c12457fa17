#include "args.h"

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <sstream>
#include <utility>

namespace sparge::cli {
namespace {

std::string join(const std::vector<std::string>& items, const char* sep) {
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) out += (i ? sep : "") + items[i];
  return out;
}

std::vector<std::string> split_commas(const std::string& s) {
  std::vector<std::string> parts;
  std::string cur;
  std::istringstream in(s);
  while (std::getline(in, cur, ',')) parts.push_back(cur);
  if (!s.empty() && s.back() == ',') parts.emplace_back();
  return parts;
}

bool parse_int(const std::string& s, int64_t* out) {
  if (s.empty()) return false;
  char* end = nullptr;
  errno = 0;
  const long long v = std::strtoll(s.c_str(), &end, 10);
  if (errno != 0 || *end != '\0') return false;
  *out = v;
  return true;
}

bool parse_real(const std::string& s, double* out) {
  if (s.empty()) return false;
  char* end = nullptr;
  const double v = std::strtod(s.c_str(), &end);
  if (*end != '\0' || std::isnan(v)) return false;
  *out = v;
  return true;
}

std::string range_text(double lo, double hi, bool lo_open) {
  std::ostringstream os;
  os << (lo_open ? "(" : "[") << lo << ", ";
  if (std::isinf(hi))
    os << "inf";
  else
    os << hi;
  os << "]";
  return os.str();
}

}  // namespace

ArgParser::ArgParser(std::string command, std::string summary)
    : command_(std::move(command)), summary_(std::move(summary)) {}

void ArgParser::add(const std::string& name, const std::string& value_name,
                    const std::string& fallback, const std::string& help) {
  Option o;
  o.name = name;
  o.value_name = value_name;
  o.fallback = fallback;
  o.help = help;
  options_.push_back(o);
}

void ArgParser::add_flag(const std::string& name, const std::string& help) {
  Option o;
  o.name = name;
  o.help = help;
  o.is_flag = true;
  options_.push_back(o);
}

ArgParser::Option* ArgParser::lookup(const std::string& name) {
  for (Option& o : options_)
    if (o.name == name) return &o;
  return nullptr;
}

const ArgParser::Option& ArgParser::find(const std::string& name) const {
  for (const Option& o : options_)
    if (o.name == name) return o;
  throw std::logic_error("sparge cli: option --" + name + " was never declared");
}

bool ArgParser::parse(int argc, char** argv, int first) {
  for (int i = first; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--help" || arg == "-h") return false;
    if (arg.rfind("--", 0) != 0)
      throw UsageError("unexpected argument '" + arg + "' (options start with --; see " + command_ +
                       " --help)");
    std::string name = arg.substr(2), value;
    const size_t eq = name.find('=');
    const bool inline_value = eq != std::string::npos;
    if (inline_value) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
    }
    Option* o = lookup(name);
    if (o == nullptr)
      throw UsageError("unknown option --" + name + " (see " + command_ + " --help)");
    if (o->is_flag) {
      if (inline_value) throw UsageError("--" + name + " takes no value, got '" + value + "'");
      o->present = true;
      continue;
    }
    if (!inline_value) {
      if (i + 1 >= argc) throw UsageError("--" + name + " needs a value (" + o->value_name + ")");
      value = argv[++i];
    }
    o->present = true;
    o->value = value;
  }
  return true;
}

std::string ArgParser::help() const {
  std::ostringstream os;
  os << "usage: " << command_ << " [options]\n\n" << summary_ << "\n\noptions:\n";
  for (const Option& o : options_) {
    std::string left = "  --" + o.name + (o.is_flag ? "" : " " + o.value_name);
    if (left.size() < 26)
      left.resize(26, ' ');
    else
      left += "\n" + std::string(26, ' ');
    os << left << o.help;
    if (!o.is_flag && !o.fallback.empty()) os << " (default " << o.fallback << ")";
    os << "\n";
  }
  os << "  --help                  this text\n";
  return os.str();
}

bool ArgParser::given(const std::string& name) const { return find(name).present; }

bool ArgParser::flag(const std::string& name) const { return find(name).present; }

std::string ArgParser::str(const std::string& name) const {
  const Option& o = find(name);
  return o.present ? o.value : o.fallback;
}

int64_t ArgParser::integer(const std::string& name, int64_t lo, int64_t hi) const {
  const std::string s = str(name);
  int64_t v = 0;
  if (!parse_int(s, &v) || v < lo || v > hi)
    throw UsageError("--" + name + " must be an integer in [" + std::to_string(lo) + ", " +
                     std::to_string(hi) + "], got '" + s + "'");
  return v;
}

double ArgParser::real(const std::string& name, double lo, double hi, bool lo_open) const {
  const std::string s = str(name);
  double v = 0;
  if (!parse_real(s, &v) || v < lo || (lo_open && v == lo) || v > hi)
    throw UsageError("--" + name + " must be a number in " + range_text(lo, hi, lo_open) +
                     ", got '" + s + "'");
  return v;
}

std::string ArgParser::choice(const std::string& name,
                              const std::vector<std::string>& choices) const {
  const std::string s = str(name);
  for (const std::string& c : choices)
    if (c == s) return s;
  throw UsageError("--" + name + " must be one of " + join(choices, ", ") + ", got '" + s + "'");
}

std::vector<int64_t> ArgParser::int_list(const std::string& name, size_t count, int64_t lo,
                                         int64_t hi) const {
  const std::string s = str(name);
  const std::vector<std::string> parts = split_commas(s);
  std::vector<int64_t> out;
  for (const std::string& p : parts) {
    int64_t v = 0;
    if (!parse_int(p, &v) || v < lo || v > hi) break;
    out.push_back(v);
  }
  if (out.size() != count || parts.size() != count)
    throw UsageError("--" + name + " must be " + std::to_string(count) +
                     " comma-separated integers in [" + std::to_string(lo) + ", " +
                     std::to_string(hi) + "], got '" + s + "'");
  return out;
}

std::vector<double> ArgParser::real_list(const std::string& name, double lo, double hi,
                                         bool lo_open) const {
  const std::string s = str(name);
  std::vector<double> out;
  for (const std::string& p : split_commas(s)) {
    double v = 0;
    if (!parse_real(p, &v) || v < lo || (lo_open && v == lo) || v > hi)
      throw UsageError("--" + name + " must be comma-separated numbers in " +
                       range_text(lo, hi, lo_open) + ", got '" + s + "'");
    out.push_back(v);
  }
  if (out.empty()) throw UsageError("--" + name + " must list at least one number, got ''");
  return out;
}

}  // namespace sparge::cli
