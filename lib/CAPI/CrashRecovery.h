//===- CrashRecovery.h - Failures inside the library as errors --*- C++ -*-===//
//
// Part of moba-mlir. Private to lib/CAPI: runs a compilation so that what
// would end the host process -- an LLVM fatal error, an allocation failure
// LLVM reports, a C++ exception, a crash signal -- becomes an error instead.
//
//===----------------------------------------------------------------------===//

#ifndef MOBA_LIB_CAPI_CRASHRECOVERY_H
#define MOBA_LIB_CAPI_CRASHRECOVERY_H

#include "llvm/ADT/STLFunctionalExtras.h"
#include "llvm/ADT/StringRef.h"
#include "llvm/Support/Error.h"

namespace mlir::moba::capi {

/// Runs `body` and returns its error. When `body` does not return -- LLVM
/// reports a fatal error or a failed allocation, a C++ exception escapes, a
/// crash signal (SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT, SIGTRAP) arrives
/// on this thread -- control comes back here (llvm::CrashRecoveryContext)
/// and the error says what happened; what `body` had allocated stays
/// allocated, and a lock it held stays held. The last line of defence: input
/// that reaches it is a bug to fix with a check before it.
///
/// While any thread is inside, LLVM's crash signal handlers are installed
/// in the process (and the previous ones restored after the last thread
/// leaves): a crash on another thread still ends the process as before.
llvm::Error runRecoverably(llvm::function_ref<llvm::Error()> body);

/// The test hook: fails the way `kind` says when it is one of "fatal-error"
/// (llvm::report_fatal_error), "bad-alloc" (llvm::report_bad_alloc_error),
/// "exception" (a std::runtime_error) or "abort" (std::abort, as a failed
/// assertion does); returns otherwise. mobaCompile calls it with
/// $MOBA_TEST_CRASH.
void crashForTesting(llvm::StringRef kind);

} // namespace mlir::moba::capi

#endif // MOBA_LIB_CAPI_CRASHRECOVERY_H
