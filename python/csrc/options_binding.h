// The options of the sparge ops, for python/csrc/binding.cc: the schema's keyword arguments and
// the readers of those arguments, both expanded from include/sparge/option_list.h in its order,
// and the option table for python/sparge/_options.py. Kept apart from binding.cc, which only
// converts tensors, streams and errors.
#pragma once

#include <torch/extension.h>

#include <climits>
#include <cstring>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "sparge/sparge.h"

namespace sparge_binding {

inline sparge::HeadParam head_param(double value, const std::optional<at::Tensor>& per_head,
                             int64_t heads_q, const char* name) {
  sparge::HeadParam p;
  p.value = static_cast<float>(value);
  if (per_head.has_value()) {
    const at::Tensor& t = *per_head;
    TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat, name, " per-head tensor must be float32, got ",
                     t.scalar_type());
    TORCH_CHECK_VALUE(t.is_cpu() && t.is_contiguous() && t.dim() == 1 && t.numel() == heads_q,
                      name, " per-head tensor must be a contiguous cpu 1-D tensor of length ",
                      heads_q, " (query heads), got shape ", t.sizes(), " on ", t.device());
    p.per_head = t.data_ptr<float>();
  }
  return p;
}

// ", float scale=0., bool causal=False, str causal_align='top_left', ..., str backend='auto'":
// the keyword arguments every op shares, with the defaults of sparge::SparseOptions{}.
inline std::string option_schema() {
  std::ostringstream os;
  for (const sparge::OptionInfo& o : sparge::option_table()) {
    const std::string kind = o.kind, name = o.name;
    if (kind == "float" || kind == "head") os << ", float " << name << "=" << o.default_value;
    if (kind == "bool") os << ", bool " << name << "=" << (o.default_value ? "True" : "False");
    if (kind == "int") os << ", int " << name << "=" << static_cast<int64_t>(o.default_value);
    if (kind == "enum")
      os << ", str " << name << "='" << o.choices.at(static_cast<size_t>(o.default_value)) << "'";
    if (kind == "head") os << ", Tensor? " << name << "_per_head=None";
  }
  os << ", str backend='" << sparge::enum_name(sparge::Backend::kAuto) << "'";
  return os.str();
}

// Reads the op's arguments in schema order.
class ArgReader {
 public:
  explicit ArgReader(c10::ArrayRef<c10::IValue> args) : args_(args) {}
  const c10::IValue& next() {
    TORCH_CHECK(pos_ < args_.size(), "sparge: the op has fewer arguments than its schema");
    return args_[pos_++];
  }
  const at::Tensor& tensor() { return next().toTensor(); }
  int32_t int32(const char* name) {
    const int64_t v = next().toInt();
    TORCH_CHECK_VALUE(v >= INT32_MIN && v <= INT32_MAX, name, " must fit in a 32-bit int, got ",
                      v);
    return static_cast<int32_t>(v);
  }
  template <typename E>
  E enumeration(const char* name, const sparge::OptionInfo* info) {
    const std::string text = next().toStringRef();
    E value{};
    if (sparge::parse_enum(text.c_str(), &value)) return value;
    std::ostringstream choices;
    const std::vector<const char*> names = info ? info->choices : sparge::backend_names();
    for (size_t i = 0; i < names.size(); ++i) choices << (i ? ", " : "") << "'" << names[i] << "'";
    TORCH_CHECK_VALUE(false, name, " must be one of ", choices.str(), ", got '", text, "'");
  }

 private:
  c10::ArrayRef<c10::IValue> args_;
  size_t pos_ = 0;
};

inline const sparge::OptionInfo* option_info(const char* name) {
  for (const sparge::OptionInfo& o : sparge::option_table())
    if (std::strcmp(o.name, name) == 0) return &o;
  return nullptr;
}

// The options part of the arguments, in option_list.h order, then `backend`.
inline sparge::SparseOptions read_options(ArgReader& in, int64_t heads_q, sparge::Backend* backend) {
  sparge::SparseOptions o;
#define SPARGE_READ_FLOAT(name, dflt, doc) o.name = static_cast<float>(in.next().toDouble());
#define SPARGE_READ_BOOL(name, dflt, doc) o.name = in.next().toBool();
#define SPARGE_READ_INT(name, dflt, doc) o.name = in.int32(#name);
#define SPARGE_READ_ENUM(name, Type, dflt, doc) \
  o.name = in.enumeration<sparge::Type>(#name, option_info(#name));
#define SPARGE_READ_HEAD(name, dflt, doc)                                      \
  {                                                                            \
    const double value = in.next().toDouble();                                 \
    o.name = head_param(value, in.next().toOptional<at::Tensor>(), heads_q, #name); \
  }
  SPARGE_OPTIONS(SPARGE_READ_FLOAT, SPARGE_READ_BOOL, SPARGE_READ_INT, SPARGE_READ_ENUM,
                 SPARGE_READ_HEAD)
#undef SPARGE_READ_FLOAT
#undef SPARGE_READ_BOOL
#undef SPARGE_READ_INT
#undef SPARGE_READ_ENUM
#undef SPARGE_READ_HEAD
  *backend = in.enumeration<sparge::Backend>("backend", nullptr);
  return o;
}

// The option table for python/sparge/_options.py: one dict per option, in schema order.
inline py::list option_table() {
  py::list out;
  for (const sparge::OptionInfo& o : sparge::option_table()) {
    py::dict d;
    d["name"] = o.name;
    d["kind"] = o.kind;
    d["default"] = o.default_value;
    d["choices"] = std::vector<std::string>(o.choices.begin(), o.choices.end());
    d["doc"] = o.doc;
    out.append(d);
  }
  return out;
}

}  // namespace sparge_binding
