//===- KernelCache.h - The disk cache of compiled kernels -------*- C++ -*-===//
//
// Part of moba-mlir. Private to lib/Runner: object code of compiled kernels
// kept in a directory between processes -- a CPU kernel's object, or a GPU
// kernel's host object with its PTX or cubin embedded -- so that another
// process loads it without running the compiler. Code loaded from there
// runs in the caller's process, so nothing in the directory is trusted:
//
// * the directory must be the caller's own (owner = effective uid, no group
//   or other permission bits, not a symbolic link), else the cache is not
//   used at all and the reason is reported;
// * every file is opened relative to the directory's descriptor with
//   O_NOFOLLOW | O_NONBLOCK, must be a regular file of the caller's with
//   mode 0600 and a bounded size, and is read once through that descriptor;
// * every file carries a header (magic, format version, the full key, the
//   payload's length, a SHA-256 over all of it) that is checked before the
//   object is handed to the JIT; a file that fails is reported and replaced;
// * files are written to a fresh temporary (O_CREAT | O_EXCL, mode 0600) in
//   the directory and renamed over their name, so that a reader sees a whole
//   file or none, also while other processes store the same key.
//
// The layout is described in docs/python.md ("Cache and IR dumps").
//
//===----------------------------------------------------------------------===//

#ifndef MOBA_LIB_RUNNER_KERNELCACHE_H
#define MOBA_LIB_RUNNER_KERNELCACHE_H

#include "llvm/ADT/StringRef.h"
#include "llvm/Support/Error.h"
#include "llvm/Support/MemoryBuffer.h"

#include <cstdint>
#include <memory>
#include <string>

namespace mlir::moba::detail {

/// One open cache directory. Not copyable; one per compile.
class KernelCache {
public:
  /// Opens `directory`, creating it (and missing parents) with mode 0700
  /// when it does not exist. When the directory is refused, usable() is
  /// false and problems() says why.
  explicit KernelCache(llvm::StringRef directory);
  ~KernelCache();
  KernelCache(const KernelCache &) = delete;
  KernelCache &operator=(const KernelCache &) = delete;

  /// True when the directory passed its checks.
  bool usable() const { return dirFd >= 0; }

  /// The object stored under `key`, verified; null when there is none or it
  /// failed verification (then problems() says why and the caller is
  /// expected to store() a fresh object, which replaces it).
  std::unique_ptr<llvm::MemoryBuffer> load(llvm::StringRef key);

  /// Stores `object` under `key`: written to a new temporary file and renamed
  /// over the final name. A failure is reported in problems(), never fatal.
  /// Test hook: with MOBA_TEST_CACHE_STORE_PAUSE=<path>, half the file is
  /// written, then <path> is created and the store waits until it is
  /// removed (at most 60 s) before writing the rest, so that a test can
  /// read the cache while a store is half done.
  void store(llvm::StringRef key, llvm::StringRef object);

  /// What went wrong so far, one sentence a line; empty when nothing did.
  /// A missing file (the first compile of a key) is not a problem.
  const std::string &problems() const { return report; }

  /// The file name of `key` in the directory: a readable prefix (the part
  /// of the key before its first '|', at most 160 characters of
  /// [A-Za-z0-9._+-]) and 16 hex digits of the key's SHA-256, then
  /// ".mobak". Keys of any length fit a file name this way; the full key is
  /// in the file's header.
  static std::string fileName(llvm::StringRef key);

  /// The bytes of a cache file holding `object` under `key`.
  static std::string encode(llvm::StringRef key, llvm::StringRef object);
  /// The payload of cache file `contents` when it is a well-formed file of
  /// this format under `key` whose hash matches; else an error saying which
  /// check failed.
  static llvm::Expected<llvm::StringRef> decode(llvm::StringRef contents,
                                                llvm::StringRef key);

  /// The largest object the cache stores or loads (64 MiB; a kernel's object
  /// is a few hundred KiB).
  static constexpr uint64_t kMaxPayloadBytes = uint64_t(64) << 20;
  /// The longest key a header may hold.
  static constexpr uint32_t kMaxKeyBytes = 64 * 1024;

private:
  void openDirectory();
  void problem(const llvm::Twine &sentence);

  std::string directory;
  int dirFd = -1;
  std::string report;
};

} // namespace mlir::moba::detail

#endif // MOBA_LIB_RUNNER_KERNELCACHE_H
