// Force-included (-include) into every Caffe translation unit by caffe/build.py.
//
// Caffe reports broken invariants with glog's CHECK/LOG(FATAL), which abort the
// process. sparknet runs Caffe inside Python interpreters and Spark executors, so
// an abort is never acceptable. After <glog/logging.h> has defined its macros we
// redefine the few that produce fatal messages so that they build a message
// object whose destructor throws sparknet::CaffeFatal instead of aborting.
// The fast path (condition true) is unchanged, so this costs nothing measurable.
#ifndef SPARKNET_FATAL_HPP_
#define SPARKNET_FATAL_HPP_

#include <glog/logging.h>

#include <sstream>
#include <stdexcept>
#include <string>

namespace sparknet {

// The exception every fatal Caffe message becomes. what() is Caffe's message,
// prefixed with the source location, as glog would have printed it.
class CaffeFatal : public std::runtime_error {
 public:
  explicit CaffeFatal(const std::string& what) : std::runtime_error(what) {}
};

class FatalMessage {
 public:
  FatalMessage(const char* file, int line) { Prefix(file, line); }
  FatalMessage(const char* file, int line, const google::CheckOpString& r) {
    Prefix(file, line);
    stream_ << "Check failed: " << *r.str_ << " ";
    delete r.str_;
  }
  FatalMessage(const char* file, int line, std::string* what) {
    Prefix(file, line);
    stream_ << "Check failed: " << *what << " ";
    delete what;
  }
  // Throwing from a destructor is what makes `CHECK(x) << "msg";` work: the
  // message is complete only when the temporary dies at the end of the
  // full expression.
  ~FatalMessage() noexcept(false) { throw CaffeFatal(stream_.str()); }
  std::ostream& stream() { return stream_; }

 private:
  void Prefix(const char* file, int line) {
    const char* base = file;
    for (const char* p = file; *p; ++p)
      if (*p == '/') base = p + 1;
    stream_ << base << ":" << line << "] ";
  }
  std::ostringstream stream_;
};

template <typename T>
T CheckNotNull(const char* file, int line, const char* names, T&& t) {
  if (t == nullptr) FatalMessage(file, line, new std::string(names));
  return std::forward<T>(t);
}

}  // namespace sparknet

// LOG(FATAL), CHECK(cond), LOG_IF(FATAL, ...), PCHECK-free paths.
#undef COMPACT_GOOGLE_LOG_FATAL
#define COMPACT_GOOGLE_LOG_FATAL sparknet::FatalMessage(__FILE__, __LINE__)

// CHECK_EQ, CHECK_LT, ... (glog routes them through LogMessageFatal).
#undef CHECK_OP
#define CHECK_OP(name, op, val1, val2) \
  CHECK_OP_LOG(name, op, val1, val2, sparknet::FatalMessage)

// CHECK_STREQ and friends.
#undef CHECK_STROP
#define CHECK_STROP(func, op, expected, s1, s2)                          \
  while (google::CheckOpString _result =                                 \
             google::Check##func##expected##Impl((s1), (s2),             \
                                                 #s1 " " #op " " #s2))   \
  sparknet::FatalMessage(__FILE__, __LINE__, _result).stream()

#undef CHECK_NOTNULL
#define CHECK_NOTNULL(val)                                          \
  sparknet::CheckNotNull(__FILE__, __LINE__, "'" #val "' Must be non NULL", \
                         (val))

#endif  // SPARKNET_FATAL_HPP_
