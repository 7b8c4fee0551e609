//===- KernelCache.cpp - The disk cache of compiled kernels ---------------===//
//
// Part of moba-mlir.
//
//===----------------------------------------------------------------------===//

#include "KernelCache.h"

#include "llvm/ADT/StringExtras.h"
#include "llvm/Support/Endian.h"
#include "llvm/Support/FileSystem.h"
#include "llvm/Support/FormatVariadic.h"
#include "llvm/Support/Path.h"
#include "llvm/Support/SHA256.h"

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <utility>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

using namespace mlir::moba::detail;

namespace {

// The header, all integers little-endian:
//   [0, 8)    magic "MOBAKRNL"
//   [8, 12)   format version
//   [12, 16)  key length K
//   [16, 24)  payload length P
//   [24, 56)  SHA-256 of [0, 24), the key and the payload
//   [56, 56 + K)          the key
//   [56 + K, 56 + K + P)  the payload: a relocatable object for this host
constexpr llvm::StringLiteral kMagic = "MOBAKRNL";
constexpr uint32_t kFormatVersion = 1;
constexpr size_t kFixedBytes = 24;
constexpr size_t kHashBytes = 32;
constexpr size_t kHeaderBytes = kFixedBytes + kHashBytes;

std::array<uint8_t, 32> contentHash(llvm::StringRef fixed, llvm::StringRef key,
                                    llvm::StringRef payload) {
  llvm::SHA256 hash;
  hash.update(fixed);
  hash.update(key);
  hash.update(payload);
  return hash.final();
}

std::string errnoText(int error) { return std::strerror(error); }

/// Closes a descriptor when it goes out of scope, unless released.
class FdCloser {
public:
  explicit FdCloser(int fd) : fd(fd) {}
  ~FdCloser() {
    if (fd >= 0)
      ::close(fd);
  }
  FdCloser(const FdCloser &) = delete;
  FdCloser &operator=(const FdCloser &) = delete;
  int release() { return std::exchange(fd, -1); }

private:
  int fd;
};

/// The test hook of KernelCache::store(): creates the file `path` (it
/// must not exist: a file left behind by an earlier run never stalls a
/// store), then waits until it is gone, at most 60 s. False when it did not
/// create the file, and so did not wait.
bool pauseForTest(const char *path) {
  int fd = ::open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
                  0600);
  if (fd < 0)
    return false;
  ::close(fd);
  for (int waited = 0; waited < 6000 && ::access(path, F_OK) == 0; ++waited)
    ::usleep(10000);
  return true;
}

std::string octalMode(mode_t mode) {
  char text[8];
  std::snprintf(text, sizeof(text), "%04o", static_cast<unsigned>(mode & 07777));
  return text;
}

} // namespace

KernelCache::KernelCache(llvm::StringRef path) : directory(path.str()) {
  openDirectory();
}

void KernelCache::openDirectory() {
  // A trailing slash would make open() follow a symbolic link despite
  // O_NOFOLLOW.
  while (directory.size() > 1 && directory.back() == '/')
    directory.pop_back();
  if (directory.empty()) {
    problem("not using the kernel cache: its directory name is empty");
    return;
  }
  auto refuse = [&](const llvm::Twine &why) {
    problem("not using the kernel cache directory '" + directory + "': " +
            why + "; compiling without the disk cache");
  };
  const int openFlags = O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC;
  bool created = false;
  int fd = ::open(directory.c_str(), openFlags);
  if (fd < 0 && errno == ENOENT) {
    llvm::StringRef parent = llvm::sys::path::parent_path(directory);
    if (!parent.empty()) {
      if (std::error_code ec = llvm::sys::fs::create_directories(
              parent, /*IgnoreExisting=*/true, llvm::sys::fs::owner_all))
        return refuse("cannot create its parent (" + ec.message() + ")");
    }
    if (::mkdir(directory.c_str(), 0700) == 0)
      created = true;
    else if (errno != EEXIST)
      return refuse("cannot create it (" + errnoText(errno) + ")");
    fd = ::open(directory.c_str(), openFlags);
  }
  if (fd < 0) {
    // O_DIRECTORY | O_NOFOLLOW fails on a link with ENOTDIR or ELOOP: say
    // which it is.
    int error = errno;
    struct stat st;
    if (::lstat(directory.c_str(), &st) == 0) {
      if (S_ISLNK(st.st_mode))
        return refuse("it is a symbolic link");
      if (!S_ISDIR(st.st_mode))
        return refuse("it is not a directory");
    }
    return refuse("cannot open it (" + errnoText(error) + ")");
  }
  FdCloser closer(fd);
  struct stat st;
  if (::fstat(fd, &st) != 0)
    return refuse("cannot stat it (" + errnoText(errno) + ")");
  if (!S_ISDIR(st.st_mode))
    return refuse("it is not a directory");
  uid_t self = ::geteuid();
  if (st.st_uid != self)
    return refuse(llvm::formatv("it is owned by uid {0}, not by this "
                                "process's uid {1}",
                                st.st_uid, self));
  // mkdir's mode passes through the umask, which may take bits away but
  // never adds any: a directory made here is set to exactly 0700.
  if (created && (st.st_mode & 07777) != 0700) {
    if (::fchmod(fd, 0700) != 0 || ::fstat(fd, &st) != 0)
      return refuse("cannot set its mode to 0700 (" + errnoText(errno) + ")");
  }
  if (st.st_mode & 077)
    return refuse("it has mode " + octalMode(st.st_mode) +
                  ", which lets other users in; it must be 0700 (chmod 700 '" +
                  directory + "')");
  dirFd = closer.release();
}

KernelCache::~KernelCache() {
  if (dirFd >= 0)
    ::close(dirFd);
}

void KernelCache::problem(const llvm::Twine &sentence) {
  report += sentence.str();
  report += '\n';
}

std::string KernelCache::fileName(llvm::StringRef key) {
  std::string name;
  for (char c : key.split('|').first.take_front(160))
    name += llvm::isAlnum(c) || llvm::StringRef("._+-").contains(c) ? c : '_';
  std::array<uint8_t, 32> digest = llvm::SHA256::hash(
      llvm::ArrayRef(reinterpret_cast<const uint8_t *>(key.data()),
                     key.size()));
  name += '-';
  name += llvm::toHex(llvm::ArrayRef(digest).take_front(8), /*LowerCase=*/true);
  name += ".mobak";
  return name;
}

std::string KernelCache::encode(llvm::StringRef key, llvm::StringRef object) {
  std::string fixed(kFixedBytes, '\0');
  std::memcpy(fixed.data(), kMagic.data(), kMagic.size());
  llvm::support::endian::write32le(fixed.data() + 8, kFormatVersion);
  llvm::support::endian::write32le(fixed.data() + 12,
                                   static_cast<uint32_t>(key.size()));
  llvm::support::endian::write64le(fixed.data() + 16, object.size());
  std::array<uint8_t, 32> digest = contentHash(fixed, key, object);
  std::string file = fixed;
  file.append(reinterpret_cast<const char *>(digest.data()), digest.size());
  file += key;
  file += object;
  return file;
}

llvm::Expected<llvm::StringRef> KernelCache::decode(llvm::StringRef contents,
                                                    llvm::StringRef key) {
  auto invalid = [](const llvm::Twine &why) {
    return llvm::createStringError(why.str());
  };
  if (contents.size() < kHeaderBytes)
    return invalid(llvm::formatv("it has {0} bytes, fewer than the header's "
                                 "{1}",
                                 contents.size(), kHeaderBytes));
  if (!contents.starts_with(kMagic))
    return invalid("it does not start with the magic \"" + kMagic + "\"");
  const char *data = contents.data();
  uint32_t version = llvm::support::endian::read32le(data + 8);
  if (version != kFormatVersion)
    return invalid(llvm::formatv("it has format version {0}, this compiler "
                                 "reads {1}",
                                 version, kFormatVersion));
  uint64_t keyBytes = llvm::support::endian::read32le(data + 12);
  uint64_t payloadBytes = llvm::support::endian::read64le(data + 16);
  if (keyBytes > kMaxKeyBytes)
    return invalid(llvm::formatv("its header gives a key of {0} bytes, more "
                                 "than the limit of {1}",
                                 keyBytes, kMaxKeyBytes));
  if (payloadBytes > kMaxPayloadBytes)
    return invalid(llvm::formatv("its header gives an object of {0} bytes, "
                                 "more than the limit of {1}",
                                 payloadBytes, kMaxPayloadBytes));
  // Both bounded above: no overflow.
  uint64_t expected = kHeaderBytes + keyBytes + payloadBytes;
  if (contents.size() != expected)
    return invalid(llvm::formatv("it has {0} bytes but its header describes "
                                 "{1}",
                                 contents.size(), expected));
  llvm::StringRef storedKey = contents.substr(kHeaderBytes, keyBytes);
  llvm::StringRef payload = contents.substr(kHeaderBytes + keyBytes);
  std::array<uint8_t, 32> digest =
      contentHash(contents.take_front(kFixedBytes), storedKey, payload);
  if (std::memcmp(digest.data(), data + kFixedBytes, kHashBytes) != 0)
    return invalid("its content hash does not match (the file is corrupt)");
  if (storedKey != key)
    return invalid("it holds the kernel of another key ('" +
                   storedKey.split('|').first.take_front(200) + "')");
  return payload;
}

std::unique_ptr<llvm::MemoryBuffer> KernelCache::load(llvm::StringRef key) {
  if (!usable())
    return nullptr;
  std::string name = fileName(key);
  auto reject = [&](const llvm::Twine &why) -> std::unique_ptr<llvm::MemoryBuffer> {
    problem("the cached kernel '" + directory + "/" + name +
            "' was not used: " + why + "; compiling it again");
    return nullptr;
  };
  // O_NONBLOCK: opening a FIFO must not wait for a writer.
  int fd = ::openat(dirFd, name.c_str(),
                    O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) {
    int error = errno;
    if (error == ENOENT)
      return nullptr;
    if (error == ELOOP)
      return reject("it is a symbolic link");
    return reject("it cannot be opened (" + errnoText(error) + ")");
  }
  FdCloser closer(fd);
  struct stat st;
  if (::fstat(fd, &st) != 0)
    return reject("it cannot be examined (" + errnoText(errno) + ")");
  if (!S_ISREG(st.st_mode))
    return reject("it is not a regular file");
  if (st.st_uid != ::geteuid())
    return reject(llvm::formatv("it is owned by uid {0}", st.st_uid));
  if (st.st_mode & 077)
    return reject("it has mode " + octalMode(st.st_mode) +
                  ", not 0600");
  uint64_t limit = kHeaderBytes + kMaxKeyBytes + kMaxPayloadBytes;
  if (st.st_size < 0 || static_cast<uint64_t>(st.st_size) > limit)
    return reject(llvm::formatv("it has {0} bytes, more than the limit of {1}",
                                st.st_size, limit));
  std::string contents(static_cast<size_t>(st.st_size), '\0');
  size_t done = 0;
  while (done < contents.size()) {
    ssize_t n = ::read(fd, contents.data() + done, contents.size() - done);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0)
      return reject("reading it failed (" + errnoText(errno) + ")");
    if (n == 0)
      return reject("it ended before its size");
    done += static_cast<size_t>(n);
  }
  auto payload = decode(contents, key);
  if (!payload)
    return reject(llvm::toString(payload.takeError()));
  // A copy: the JIT wants the object aligned, as a fresh buffer is.
  return llvm::MemoryBuffer::getMemBufferCopy(*payload, name);
}

void KernelCache::store(llvm::StringRef key, llvm::StringRef object) {
  if (!usable())
    return;
  if (object.size() > kMaxPayloadBytes || key.size() > kMaxKeyBytes) {
    problem("the kernel was not cached: its object or key is over the "
            "cache's limits");
    return;
  }
  std::string name = fileName(key);
  std::string contents = encode(key, object);
  // A new file of our own: O_EXCL fails on anything already there, a
  // symbolic link included, rather than following or reusing it. The first
  // name is predictable (one per process and key); a taken one is retried
  // under random names.
  std::random_device random;
  std::string temporary;
  int fd = -1;
  int error = 0;
  for (int attempt = 0; attempt < 16 && fd < 0; ++attempt) {
    temporary = llvm::formatv(".{0}.{1}", name, ::getpid()).str();
    if (attempt)
      temporary += "." + llvm::utohexstr((uint64_t(random()) << 32) | random());
    temporary += ".tmp";
    fd = ::openat(dirFd, temporary.c_str(),
                  O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    error = errno;
    if (fd < 0 && error != EEXIST)
      break;
  }
  if (fd < 0) {
    problem("the kernel was not cached: cannot create a temporary file in '" +
            directory + "' (" + errnoText(error) + ")");
    return;
  }
  auto discard = [&](const llvm::Twine &why) {
    ::unlinkat(dirFd, temporary.c_str(), 0);
    problem("the kernel was not cached: " + why);
  };
  // Writes contents[from, to); false on an error, left in errno.
  auto writeRange = [&](size_t from, size_t to) {
    for (size_t done = from; done < to;) {
      ssize_t n = ::write(fd, contents.data() + done, to - done);
      if (n < 0 && errno == EINTR)
        continue;
      if (n <= 0)
        return false;
      done += static_cast<size_t>(n);
    }
    return true;
  };
  const char *pause = std::getenv("MOBA_TEST_CACHE_STORE_PAUSE");
  size_t half = pause && *pause ? contents.size() / 2 : contents.size();
  bool written = ::fchmod(fd, 0600) == 0 && writeRange(0, half);
  if (written && half < contents.size()) {
    // Said in the warning, so that a variable left set by accident shows.
    if (pauseForTest(pause))
      problem("the test hook MOBA_TEST_CACHE_STORE_PAUSE paused this store "
              "half-written");
    written = writeRange(half, contents.size());
  }
  error = errno;
  if (::close(fd) != 0 && written) {
    written = false;
    error = errno;
  }
  if (!written)
    return discard("writing '" + temporary + "' failed (" + errnoText(error) +
                   ")");
  // rename() replaces whatever is at the name (a corrupt file, a symbolic
  // link, a FIFO) without following it; a directory there stays and the
  // cache goes unused for this key.
  if (::renameat(dirFd, temporary.c_str(), dirFd, name.c_str()) != 0)
    return discard("cannot rename the temporary over '" + directory + "/" +
                   name + "' (" + errnoText(errno) + ")");
}
