// Error reporting for the whole library.
//
// The core never throws: every entry point returns a Status. `sparge::check(status)` turns a
// failed Status into a `sparge::Error` for callers who prefer exceptions. (HostBlockMask, a
// value type whose constructor and to_dense/from_dense have no Status to return, uses check()
// on bad geometry or contents.) Messages always name
// the offending argument and the value that was expected, e.g.
//   "SparseOptions.select_value (cdf_threshold) must be in (0, 1], got 1.5".
#pragma once

#include <stdexcept>
#include <string>
#include <utility>

namespace sparge {

enum class StatusCode : int {
  kOk = 0,
  kInvalidArgument = 1,  // a caller error: shape, dtype, stride, option out of range, ...
  kUnsupported = 2,      // valid request this build or device cannot serve (head dim, arch, ...)
  kWorkspaceTooSmall = 3,
  kCudaError = 4,        // a CUDA runtime call failed (no driver, launch failure, ...)
  kInternal = 5,
};

class [[nodiscard]] Status {
 public:
  Status() = default;
  static Status ok() { return Status(); }
  static Status invalid(std::string msg) { return Status(StatusCode::kInvalidArgument, std::move(msg)); }
  static Status unsupported(std::string msg) { return Status(StatusCode::kUnsupported, std::move(msg)); }
  static Status workspace(std::string msg) { return Status(StatusCode::kWorkspaceTooSmall, std::move(msg)); }
  static Status cuda(std::string msg) { return Status(StatusCode::kCudaError, std::move(msg)); }
  static Status internal(std::string msg) { return Status(StatusCode::kInternal, std::move(msg)); }

  bool is_ok() const { return code_ == StatusCode::kOk; }
  explicit operator bool() const { return is_ok(); }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }
  // The same status with `context` before its message (which part of a call failed).
  Status with_context(const std::string& context) const {
    return is_ok() ? *this : Status(code_, context + message_);
  }

 private:
  Status(StatusCode code, std::string msg) : code_(code), message_(std::move(msg)) {}
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
};

// Thrown only by `check()`; carries the Status code so bindings can map it (ValueError, ...).
class Error : public std::runtime_error {
 public:
  explicit Error(const Status& s) : std::runtime_error(s.message()), code_(s.code()) {}
  StatusCode code() const { return code_; }

 private:
  StatusCode code_;
};

inline void check(const Status& s) {
  if (!s.is_ok()) throw Error(s);
}

}  // namespace sparge

// Propagate a failed Status from inside a function that returns Status.
#define SPARGE_RETURN_IF_ERROR(expr)        \
  do {                                      \
    ::sparge::Status _sparge_st = (expr);   \
    if (!_sparge_st.is_ok()) return _sparge_st; \
  } while (0)
