//===- CrashRecovery.cpp - Failures inside the library as errors ----------===//
//
// Part of moba-mlir.
//
//===----------------------------------------------------------------------===//

#include "CrashRecovery.h"

#include "llvm/Support/CrashRecoveryContext.h"
#include "llvm/Support/ErrorHandling.h"

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <mutex>
#include <stdexcept>
#include <string>
#include <unistd.h>

using namespace mlir::moba;

namespace {

/// What the handlers below saw on this thread, inside runRecoverably. A fixed
/// buffer: the allocation-failure handler must not allocate.
thread_local char failure[1024];

void writeToStderr(const char *text) {
  ssize_t ignored = ::write(STDERR_FILENO, text, std::strlen(text));
  (void)ignored;
}

/// LLVM calls this for report_fatal_error and report_bad_alloc_error. Inside
/// runRecoverably it records the reason and jumps back there; elsewhere it
/// does what LLVM does without a handler: print, then the caller ends the
/// process.
void handleFatalError(void *badAlloc, const char *reason, bool) {
  if (llvm::CrashRecoveryContext *context =
          llvm::CrashRecoveryContext::GetCurrent()) {
    std::snprintf(failure, sizeof(failure), "LLVM ERROR: %s", reason);
    context->HandleExit(1);
  }
  writeToStderr("LLVM ERROR: ");
  writeToStderr(badAlloc ? "out of memory" : reason);
  writeToStderr("\n");
  // report_fatal_error exits when the handler returns; report_bad_alloc_error
  // must not get control back.
  if (badAlloc)
    std::abort();
}

void installHandlersOnce() {
  static std::once_flag once;
  std::call_once(once, [] {
    static int badAlloc = 1;
    llvm::install_fatal_error_handler(handleFatalError, nullptr);
    llvm::install_bad_alloc_error_handler(handleFatalError, &badAlloc);
  });
}

/// Crash recovery (LLVM's signal handlers) is on while any thread is inside
/// runRecoverably.
std::mutex recoveryMutex;
int threadsInside = 0;

struct RecoveryScope {
  RecoveryScope() {
    std::lock_guard<std::mutex> lock(recoveryMutex);
    if (threadsInside++ == 0)
      llvm::CrashRecoveryContext::Enable();
  }
  ~RecoveryScope() {
    std::lock_guard<std::mutex> lock(recoveryMutex);
    if (--threadsInside == 0)
      llvm::CrashRecoveryContext::Disable();
  }
};

std::string describeCrash(int retCode) {
  if (retCode == 1 && failure[0])
    return failure;
  if (retCode > 128) {
    int signal = retCode - 128;
    const char *name = strsignal(signal);
    return "the compiler crashed with signal " + std::to_string(signal) +
           (name ? " (" + std::string(name) + ")" : std::string());
  }
  return "the compiler failed with code " + std::to_string(retCode);
}

} // namespace

llvm::Error
mlir::moba::capi::runRecoverably(llvm::function_ref<llvm::Error()> body) {
  installHandlersOnce();
  RecoveryScope scope;
  failure[0] = '\0';
  llvm::Error result = llvm::Error::success();
  std::string exception;
  llvm::CrashRecoveryContext context;
  bool finished = context.RunSafely([&] {
    // Exceptions stop here: LLVM's frames between this and the caller have
    // no handlers of their own.
    try {
      result = body();
    } catch (const std::exception &e) {
      exception = e.what();
    } catch (...) {
      exception = "an exception of unknown type";
    }
  });
  if (!finished) {
    // `result` may hold an error of the abandoned body: drop it unread.
    llvm::consumeError(std::move(result));
    return llvm::createStringError(
        "internal compiler error: " + describeCrash(context.RetCode) +
        " (recovered: the process lives on, but what this compile had "
        "allocated is leaked)");
  }
  if (!exception.empty()) {
    llvm::consumeError(std::move(result));
    return llvm::createStringError("internal compiler error: C++ exception: " +
                                   exception);
  }
  return result;
}

void mlir::moba::capi::crashForTesting(llvm::StringRef kind) {
  if (kind == "fatal-error")
    llvm::report_fatal_error("moba test hook: a fatal error");
  if (kind == "bad-alloc")
    llvm::report_bad_alloc_error("moba test hook: an allocation failure");
  if (kind == "exception")
    throw std::runtime_error("moba test hook: an exception");
  if (kind == "abort")
    std::abort();
}
