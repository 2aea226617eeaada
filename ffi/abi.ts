/**
 * Numbers of the Linux kernel ABI (x86-64 and arm64 share them) that more
 * than one ffi module uses: flags, socket levels, signal numbers. A number
 * only one module uses stays beside its use.
 *
 * @module
 */

/** open(2), pipe2(2): close the descriptor on exec. */
export const O_CLOEXEC = 0o2000000;
/** open(2), fcntl(2): never block on the descriptor. */
export const O_NONBLOCK = 0o4000;
/** socket(2), accept4(2), eventfd(2), timerfd_create(2): the same bits as O_CLOEXEC. */
export const SOCK_CLOEXEC = O_CLOEXEC;
/** socket(2), accept4(2): the same bit as O_NONBLOCK. */
export const SOCK_NONBLOCK = O_NONBLOCK;
/** socket(2) types. */
export const SOCK_STREAM = 1, SOCK_DGRAM = 2, SOCK_SEQPACKET = 5;
/** Address families. */
export const AF_UNIX = 1, AF_INET = 2, AF_INET6 = 10;
/** setsockopt(2) level of the socket itself. */
export const SOL_SOCKET = 1;
/** fcntl(2) commands and the close-on-exec descriptor flag. */
export const F_SETFD = 2, F_GETFL = 3, F_SETFL = 4, FD_CLOEXEC = 1;

/** Signal numbers. */
export const SIGHUP = 1, SIGINT = 2, SIGQUIT = 3, SIGKILL = 9, SIGTERM = 15;
