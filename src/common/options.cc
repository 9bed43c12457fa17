// The run-time view of the option list (include/sparge/option_list.h): the table the bindings
// and the command line read their names and defaults from, and the enums' names.
#include <charconv>
#include <cstdlib>
#include <cstring>

#include "sparge/types.h"

namespace sparge {
namespace {

struct EnumEntry {
  int code;
  const char* name;
};

#define SPARGE_ENUM_ENTRY(kName, c_name, code, py_name, doc) EnumEntry{code, py_name},
constexpr EnumEntry kCausalAligns[] = {SPARGE_CAUSAL_ALIGN_VALUES(SPARGE_ENUM_ENTRY)};
constexpr EnumEntry kSelectModes[] = {SPARGE_SELECT_MODE_VALUES(SPARGE_ENUM_ENTRY)};
constexpr EnumEntry kEstimateModes[] = {SPARGE_ESTIMATE_MODE_VALUES(SPARGE_ENUM_ENTRY)};
constexpr EnumEntry kQuantModes[] = {SPARGE_QUANT_MODE_VALUES(SPARGE_ENUM_ENTRY)};
constexpr EnumEntry kBackends[] = {SPARGE_BACKEND_VALUES(SPARGE_ENUM_ENTRY)};
#undef SPARGE_ENUM_ENTRY

// The value list of each enum, found by overload on a value of the enum's type.
constexpr const auto& entries(CausalAlign) { return kCausalAligns; }
constexpr const auto& entries(SelectMode) { return kSelectModes; }
constexpr const auto& entries(EstimateMode) { return kEstimateModes; }
constexpr const auto& entries(QuantMode) { return kQuantModes; }
constexpr const auto& entries(Backend) { return kBackends; }

template <typename E>
const char* name_of(E v) {
  for (const EnumEntry& e : entries(E{}))
    if (e.code == static_cast<int>(v)) return e.name;
  return nullptr;
}

template <typename E>
bool parse(const char* name, E* out) {
  if (name == nullptr) return false;
  for (const EnumEntry& e : entries(E{}))
    if (std::strcmp(e.name, name) == 0) {
      *out = static_cast<E>(e.code);
      return true;
    }
  return false;
}

template <typename E>
std::vector<const char*> names() {
  std::vector<const char*> out;
  for (const EnumEntry& e : entries(E{})) out.push_back(e.name);
  return out;
}

// The double that prints as the float's shortest decimal (0.6f -> 0.6, not 0.6000000238), so
// Python signatures and schemas show the default as it is written in option_list.h.
double decimal(float x) {
  char buf[32];
  const auto end = std::to_chars(buf, buf + sizeof(buf) - 1, x).ptr;
  *end = '\0';
  return std::strtod(buf, nullptr);
}

std::vector<OptionInfo> make_table() {
  const SparseOptions d;  // the defaults, as the struct declares them
  std::vector<OptionInfo> t;
#define SPARGE_INFO_FLOAT(name, dflt, doc) \
  t.push_back({#name, "float", decimal(d.name), nullptr, {}, doc});
#define SPARGE_INFO_BOOL(name, dflt, doc) \
  t.push_back({#name, "bool", d.name ? 1.0 : 0.0, nullptr, {}, doc});
#define SPARGE_INFO_INT(name, dflt, doc) t.push_back({#name, "int", double(d.name), nullptr, {}, doc});
#define SPARGE_INFO_ENUM(name, Type, dflt, doc) \
  t.push_back({#name, "enum", double(static_cast<int>(d.name)), #Type, names<Type>(), doc});
#define SPARGE_INFO_HEAD(name, dflt, doc) \
  t.push_back({#name, "head", decimal(d.name.value), nullptr, {}, doc});
  SPARGE_OPTIONS(SPARGE_INFO_FLOAT, SPARGE_INFO_BOOL, SPARGE_INFO_INT, SPARGE_INFO_ENUM,
                 SPARGE_INFO_HEAD)
#undef SPARGE_INFO_FLOAT
#undef SPARGE_INFO_BOOL
#undef SPARGE_INFO_INT
#undef SPARGE_INFO_ENUM
#undef SPARGE_INFO_HEAD
  return t;
}

}  // namespace

const std::vector<OptionInfo>& option_table() {
  static const std::vector<OptionInfo> table = make_table();
  return table;
}

const char* enum_name(CausalAlign v) { return name_of(v); }
const char* enum_name(SelectMode v) { return name_of(v); }
const char* enum_name(EstimateMode v) { return name_of(v); }
const char* enum_name(QuantMode v) { return name_of(v); }
const char* enum_name(Backend v) { return name_of(v); }
bool parse_enum(const char* name, CausalAlign* out) { return parse(name, out); }
bool parse_enum(const char* name, SelectMode* out) { return parse(name, out); }
bool parse_enum(const char* name, EstimateMode* out) { return parse(name, out); }
bool parse_enum(const char* name, QuantMode* out) { return parse(name, out); }
bool parse_enum(const char* name, Backend* out) { return parse(name, out); }
std::vector<const char*> backend_names() { return names<Backend>(); }

}  // namespace sparge
