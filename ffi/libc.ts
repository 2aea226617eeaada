/**
 * The libc boundary: every C function vdeno calls, loaded once.
 *
 * Nothing outside `ffi/` touches these symbols. Parameters mirror the C
 * declarations noted beside them. 64-bit integers are declared as such and
 * passed as bigint where they are parameters, so calls stay on V8's fast path.
 *
 * @module
 */

import { F_GETFL, F_SETFL, O_NONBLOCK } from "./abi.ts";

const symbols = {
  // int socket(int domain, int type, int protocol)
  socket: { parameters: ["i32", "i32", "i32"], result: "i32" },
  // int bind(int fd, const struct sockaddr *addr, socklen_t len)
  bind: { parameters: ["i32", "buffer", "u32"], result: "i32" },
  // int connect(int fd, const struct sockaddr *addr, socklen_t len)
  connect: { parameters: ["i32", "buffer", "u32"], result: "i32" },
  // int listen(int fd, int backlog)
  listen: { parameters: ["i32", "i32"], result: "i32" },
  // int accept4(int fd, struct sockaddr *addr, socklen_t *len, int flags)
  accept4: { parameters: ["i32", "pointer", "pointer", "i32"], result: "i32" },
  // int setsockopt(int fd, int level, int name, const void *value, socklen_t len)
  setsockopt: { parameters: ["i32", "i32", "i32", "buffer", "u32"], result: "i32" },
  // int getsockopt(int fd, int level, int name, void *value, socklen_t *len)
  getsockopt: { parameters: ["i32", "i32", "i32", "buffer", "buffer"], result: "i32" },
  // int getsockname(int fd, struct sockaddr *addr, socklen_t *len)
  getsockname: { parameters: ["i32", "buffer", "buffer"], result: "i32" },
  // ssize_t sendto(int fd, const void *buf, size_t len, int flags, const struct sockaddr *to, socklen_t tolen)
  sendto: {
    parameters: ["i32", "pointer", "usize", "i32", "pointer", "u32"],
    result: "isize",
  },
  // int sendmmsg(int fd, struct mmsghdr *vec, unsigned int vlen, int flags)
  sendmmsg: { parameters: ["i32", "pointer", "u32", "i32"], result: "i32" },
  // int recvmmsg(int fd, struct mmsghdr *vec, unsigned int vlen, int flags, struct timespec *timeout)
  recvmmsg: { parameters: ["i32", "pointer", "u32", "i32", "pointer"], result: "i32" },
  // ssize_t sendmsg(int fd, const struct msghdr *msg, int flags)
  sendmsg: { parameters: ["i32", "buffer", "i32"], result: "isize" },
  // ssize_t recvmsg(int fd, struct msghdr *msg, int flags)
  recvmsg: { parameters: ["i32", "buffer", "i32"], result: "isize" },
  // The four below return ssize_t, read here as its low 32 bits: no transfer vdeno asks for
  // comes near 2 GB, -1 stays -1, and an i32 result spares the data path a BigInt per call.
  // ssize_t read(int fd, void *buf, size_t count)
  read: { parameters: ["i32", "pointer", "usize"], result: "i32" },
  // ssize_t readv(int fd, const struct iovec *iov, int iovcnt)
  readv: { parameters: ["i32", "pointer", "i32"], result: "i32" },
  // ssize_t write(int fd, const void *buf, size_t count)
  write: { parameters: ["i32", "pointer", "usize"], result: "i32" },
  // ssize_t writev(int fd, const struct iovec *iov, int iovcnt)
  writev: { parameters: ["i32", "pointer", "i32"], result: "i32" },
  // int dup2(int oldfd, int newfd)
  dup2: { parameters: ["i32", "i32"], result: "i32" },
  // int close(int fd)
  close: { parameters: ["i32"], result: "i32" },
  // int open(const char *path, int flags, mode_t mode)
  open: { parameters: ["buffer", "i32", "u32"], result: "i32" },
  // int ioctl(int fd, unsigned long request, void *arg)
  ioctl: { parameters: ["i32", "u64", "buffer"], result: "i32" },
  // int ioctl(int fd, unsigned long request, unsigned long arg), for requests that take a value
  ioctl_value: { name: "ioctl", parameters: ["i32", "u64", "u64"], result: "i32" },
  // int fchmod(int fd, mode_t mode)
  fchmod: { parameters: ["i32", "u32"], result: "i32" },
  // int fcntl(int fd, int cmd, int arg)
  fcntl: { parameters: ["i32", "i32", "i32"], result: "i32" },
  // int poll(struct pollfd *fds, nfds_t nfds, int timeout)
  poll: { parameters: ["buffer", "u64", "i32"], result: "i32" },
  // int poll(...) run on a thread of its own, for callers that must not block the event loop
  poll_nonblocking: {
    name: "poll",
    parameters: ["buffer", "u64", "i32"],
    result: "i32",
    nonblocking: true,
  },
  // int pipe2(int fds[2], int flags)
  pipe2: { parameters: ["buffer", "i32"], result: "i32" },
  // int timerfd_create(int clockid, int flags)
  timerfd_create: { parameters: ["i32", "i32"], result: "i32" },
  // int timerfd_settime(int fd, int flags, const struct itimerspec *new, struct itimerspec *old)
  timerfd_settime: { parameters: ["i32", "i32", "buffer", "buffer"], result: "i32" },
  // int eventfd(unsigned int initval, int flags)
  eventfd: { parameters: ["u32", "i32"], result: "i32" },
  // int socketpair(int domain, int type, int protocol, int sv[2])
  socketpair: { parameters: ["i32", "i32", "i32", "buffer"], result: "i32" },
  // int *__errno_location(void)
  __errno_location: { parameters: [], result: "pointer" },
  // char *strerror(int errnum)
  strerror: { parameters: ["i32"], result: "pointer" },
  // unsigned int if_nametoindex(const char *ifname)
  if_nametoindex: { parameters: ["buffer"], result: "u32" },
  // int inet_pton(int af, const char *src, void *dst)
  inet_pton: { parameters: ["i32", "buffer", "buffer"], result: "i32" },
  // int getaddrinfo(const char *node, const char *service, const struct addrinfo *hints,
  //                 struct addrinfo **res)
  getaddrinfo: { parameters: ["buffer", "buffer", "buffer", "buffer"], result: "i32" },
  // void freeaddrinfo(struct addrinfo *res)
  freeaddrinfo: { parameters: ["pointer"], result: "void" },
  // int posix_spawnp(pid_t *pid, const char *file, const posix_spawn_file_actions_t *fa,
  //                  const posix_spawnattr_t *attr, char *const argv[], char *const envp[])
  posix_spawnp: {
    parameters: ["buffer", "buffer", "buffer", "buffer", "buffer", "buffer"],
    result: "i32",
  },
  // int posix_spawn_file_actions_init(posix_spawn_file_actions_t *fa)
  posix_spawn_file_actions_init: { parameters: ["buffer"], result: "i32" },
  // int posix_spawn_file_actions_destroy(posix_spawn_file_actions_t *fa)
  posix_spawn_file_actions_destroy: { parameters: ["buffer"], result: "i32" },
  // int posix_spawn_file_actions_adddup2(posix_spawn_file_actions_t *fa, int fd, int newfd)
  posix_spawn_file_actions_adddup2: { parameters: ["buffer", "i32", "i32"], result: "i32" },
  // int posix_spawnattr_init(posix_spawnattr_t *attr)
  posix_spawnattr_init: { parameters: ["buffer"], result: "i32" },
  // int posix_spawnattr_destroy(posix_spawnattr_t *attr)
  posix_spawnattr_destroy: { parameters: ["buffer"], result: "i32" },
  // int posix_spawnattr_setflags(posix_spawnattr_t *attr, short flags)
  posix_spawnattr_setflags: { parameters: ["buffer", "i16"], result: "i32" },
  // int posix_spawnattr_setsigdefault(posix_spawnattr_t *attr, const sigset_t *set)
  posix_spawnattr_setsigdefault: { parameters: ["buffer", "buffer"], result: "i32" },
  // int posix_spawnattr_setsigmask(posix_spawnattr_t *attr, const sigset_t *set)
  posix_spawnattr_setsigmask: { parameters: ["buffer", "buffer"], result: "i32" },
  // int pthread_sigmask(int how, const sigset_t *set, sigset_t *oldset)
  pthread_sigmask: { parameters: ["i32", "buffer", "buffer"], result: "i32" },
  // int signalfd(int fd, const sigset_t *mask, int flags)
  signalfd: { parameters: ["i32", "buffer", "i32"], result: "i32" },
  // long syscall(long number, ...): for pidfd_open, whose wrapper glibc has only since 2.36;
  // every argument goes as a long, as the kernel reads its registers.
  syscall: { parameters: ["i64", "i64", "i64"], result: "i64" },
  // int execve(const char *path, char *const argv[], char *const envp[])
  execve: { parameters: ["buffer", "buffer", "buffer"], result: "i32" },
  // int execvpe(const char *file, char *const argv[], char *const envp[])
  execvpe: { parameters: ["buffer", "buffer", "buffer"], result: "i32" },
  // sighandler_t signal(int signum, sighandler_t handler)
  signal: { parameters: ["i32", "pointer"], result: "pointer" },
  // pid_t waitpid(pid_t pid, int *status, int options)
  waitpid: { parameters: ["i32", "buffer", "i32"], result: "i32" },
  // int kill(pid_t pid, int sig)
  kill: { parameters: ["i32", "i32"], result: "i32" },
  // int sethostname(const char *name, size_t len)
  sethostname: { parameters: ["buffer", "usize"], result: "i32" },
  // int mount(const char *source, const char *target, const char *fstype,
  //           unsigned long flags, const void *data)
  mount: { parameters: ["buffer", "buffer", "buffer", "u64", "buffer"], result: "i32" },
  // int prctl(int option, unsigned long arg2, unsigned long arg3, unsigned long arg4,
  //           unsigned long arg5)
  prctl: { parameters: ["i32", "u64", "u64", "u64", "u64"], result: "i32" },
  // char *getenv(const char *name)
  getenv: { parameters: ["buffer"], result: "pointer" },
  // char **environ
  environ: { type: "pointer" },
  // uid_t getuid(void)
  getuid: { parameters: [], result: "u32" },
  // int uname(struct utsname *buf)
  uname: { parameters: ["buffer"], result: "i32" },
  // gid_t getgid(void)
  getgid: { parameters: [], result: "u32" },
  // int stat(const char *path, struct stat *buf)
  stat: { parameters: ["buffer", "buffer"], result: "i32" },
  // int fstat(int fd, struct stat *buf)
  fstat: { parameters: ["i32", "buffer"], result: "i32" },
  // int lstat(const char *path, struct stat *buf)
  lstat: { parameters: ["buffer", "buffer"], result: "i32" },
  // int mkdir(const char *path, mode_t mode)
  mkdir: { parameters: ["buffer", "u32"], result: "i32" },
  // int chmod(const char *path, mode_t mode)
  chmod: { parameters: ["buffer", "u32"], result: "i32" },
  // int unlink(const char *path)
  unlink: { parameters: ["buffer"], result: "i32" },
  // int rename(const char *from, const char *to)
  rename: { parameters: ["buffer", "buffer"], result: "i32" },
  // ssize_t readlink(const char *path, char *buf, size_t size)
  readlink: { parameters: ["buffer", "buffer", "usize"], result: "isize" },
  // char *realpath(const char *path, char *resolved)
  realpath: { parameters: ["buffer", "buffer"], result: "pointer" },
  // int chown(const char *path, uid_t owner, gid_t group)
  chown: { parameters: ["buffer", "u32", "u32"], result: "i32" },
  // DIR *opendir(const char *path)
  opendir: { parameters: ["buffer"], result: "pointer" },
  // struct dirent *readdir(DIR *dir)
  readdir: { parameters: ["pointer"], result: "pointer" },
  // int closedir(DIR *dir)
  closedir: { parameters: ["pointer"], result: "i32" },
  // int getifaddrs(struct ifaddrs **list)
  getifaddrs: { parameters: ["buffer"], result: "i32" },
  // void freeifaddrs(struct ifaddrs *list)
  freeifaddrs: { parameters: ["pointer"], result: "void" },
  // pid_t fork(void) is not here on purpose: Deno is multithreaded.
} as const satisfies Deno.ForeignLibraryInterface;

function loadLibc(): Deno.DynamicLibrary<typeof symbols> {
  const candidates = ["libc.so.6", "libc.so"];
  let lastError: unknown;
  for (const path of candidates) {
    try {
      return Deno.dlopen(path, symbols);
    } catch (error) {
      lastError = error;
    }
  }
  throw new Error(`Cannot load the C library: ${String(lastError)}`);
}

/** The loaded C library. */
export const libc: Deno.DynamicLibrary<typeof symbols>["symbols"] = loadLibc().symbols;

const errnoCell = new Int32Array(
  Deno.UnsafePointerView.getArrayBuffer(libc.__errno_location()!, 4),
);

/** The calling thread's errno, read right after a failed call. */
export function errno(): number {
  return errnoCell[0];
}

/** The C library's text for an errno value. */
export function strerror(code: number): string {
  const text = libc.strerror(code);
  return text === null ? `errno ${code}` : Deno.UnsafePointerView.getCString(text);
}

/** An operating system call that failed, with its errno. */
export class SystemError extends Error {
  /** The errno value of the failure. */
  readonly code: number;
  constructor(what: string, code: number) {
    super(`${what}: ${strerror(code)}`);
    this.name = "SystemError";
    this.code = code;
  }
}

/** Throws a {@linkcode SystemError} naming `what` when a libc call returned a negative value. */
export function check(result: number | bigint, what: string): number {
  if (result < 0) throw new SystemError(what, errno());
  return Number(result);
}

const encoder = new TextEncoder();

/** A NUL-terminated copy of `text`, for C string parameters. */
export function cString(text: string): Uint8Array<ArrayBuffer> {
  const bytes = new Uint8Array(encoder.encode(text).length + 1);
  encoder.encodeInto(text, bytes);
  return bytes;
}

/** The address of a byte buffer, for structures that hold pointers. */
export function addressOf(buffer: Uint8Array<ArrayBuffer>, offset = 0): bigint {
  return BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(buffer))) + BigInt(offset);
}

/** Writes a 64-bit address into a structure held as 32-bit words, at word `word`. */
export function setAddress(words: Uint32Array, word: number, address: number): void {
  // Not `address % 2 ** 32`: on a number above 2 ** 31, V8's optimized code calls fmod for it.
  const high = Math.floor(address / 0x100000000);
  words[word] = address - high * 0x100000000;
  words[word + 1] = high;
}

/**
 * Writes iovec `index` of a vector held as 32-bit words (struct iovec: a
 * 64-bit base, a 64-bit length): `length` bytes from `address`.
 */
export function setIovec(words: Uint32Array, index: number, address: number, length: number): void {
  const word = index * 4;
  setAddress(words, word, address);
  words[word + 2] = length;
  words[word + 3] = 0;
}

/** Errno values vdeno reacts to. */
export const Errno = {
  EPERM: 1,
  ENOENT: 2,
  EINTR: 4,
  EIO: 5,
  EBADF: 9,
  EAGAIN: 11,
  EACCES: 13,
  EBUSY: 16,
  EEXIST: 17,
  ENOTDIR: 20,
  EISDIR: 21,
  EINVAL: 22,
  EPIPE: 32,
  ELOOP: 40,
  EADDRINUSE: 98,
  EADDRNOTAVAIL: 99,
  ENETDOWN: 100,
  ENETUNREACH: 101,
  ECONNRESET: 104,
  ECONNREFUSED: 111,
  EHOSTUNREACH: 113,
} as const;

/** Closes a descriptor, ignoring errors: used on cleanup paths. */
export function closeQuietly(fd: number): void {
  if (fd >= 0) libc.close(fd);
}

/** Sets O_NONBLOCK on a descriptor; returns its file status flags from before. */
export function setNonBlocking(fd: number): number {
  const flags = check(libc.fcntl(fd, F_GETFL, 0), "fcntl");
  check(libc.fcntl(fd, F_SETFL, flags | O_NONBLOCK), "fcntl");
  return flags;
}

/**
 * Puts back file status flags that {@linkcode setNonBlocking} returned: a
 * descriptor shared with other processes (stdout on a terminal) must not stay
 * non-blocking for them. Errors are ignored: used on cleanup paths.
 */
export function restoreStatusFlags(fd: number, flags: number): void {
  libc.fcntl(fd, F_SETFL, flags);
}
