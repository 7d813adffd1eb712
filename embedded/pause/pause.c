/*
 * kaji's sandbox ("pause") program: the first process of every pod sandbox. It holds the
 * pod's namespaces open, reaps orphaned children that get re-parented to it (SIGCHLD),
 * and exits 0 on SIGINT or SIGTERM.
 *
 * It is freestanding: raw Linux system calls, no libc, linked statically with
 * -nostdlib, so the image that carries it needs nothing else. x86_64 and aarch64.
 *
 * Design: the three signals are blocked and collected synchronously with
 * rt_sigtimedwait, so no signal handler (and no sa_restorer trampoline) is needed, and
 * the signals still arrive when this runs as PID 1 of a PID namespace, where the kernel
 * drops signals whose disposition is the default unless they are blocked.
 */

typedef unsigned long u64;
typedef long i64;

#define SIGINT 2
#define SIGTERM 15
#define SIGCHLD 17
#define SIG_BLOCK 0
#define WNOHANG 1
#define EINTR 4
#define EAGAIN 11

#if defined(__x86_64__)
#define SYS_write 1
#define SYS_rt_sigprocmask 14
#define SYS_wait4 61
#define SYS_rt_sigtimedwait 128
#define SYS_exit_group 231

__asm__(".text\n"
        ".global _start\n"
        "_start:\n"
        "  xor %rbp, %rbp\n"
        "  and $-16, %rsp\n"
        "  call pause_main\n"
        "  hlt\n");

static i64 syscall4(i64 n, i64 a, i64 b, i64 c, i64 d) {
    i64 ret;
    register i64 r10 __asm__("r10") = d;
    __asm__ volatile("syscall"
                     : "=a"(ret)
                     : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10)
                     : "rcx", "r11", "memory");
    return ret;
}
#elif defined(__aarch64__)
#define SYS_write 64
#define SYS_exit_group 94
#define SYS_rt_sigprocmask 135
#define SYS_rt_sigtimedwait 137
#define SYS_wait4 260

__asm__(".text\n"
        ".global _start\n"
        "_start:\n"
        "  mov x29, #0\n"
        "  mov x30, #0\n"
        "  bl pause_main\n"
        "1: b 1b\n");

static i64 syscall4(i64 n, i64 a, i64 b, i64 c, i64 d) {
    register i64 x8 __asm__("x8") = n;
    register i64 x0 __asm__("x0") = a;
    register i64 x1 __asm__("x1") = b;
    register i64 x2 __asm__("x2") = c;
    register i64 x3 __asm__("x3") = d;
    __asm__ volatile("svc #0" : "+r"(x0) : "r"(x8), "r"(x1), "r"(x2), "r"(x3) : "memory");
    return x0;
}
#else
#error "the pause program supports x86_64 and aarch64"
#endif

static void say(const char *s) {
    u64 n = 0;
    while (s[n]) n++;
    syscall4(SYS_write, 2, (i64)s, (i64)n, 0);
}

static __attribute__((noreturn)) void exit_group(int code) {
    for (;;) syscall4(SYS_exit_group, code, 0, 0, 0);
}

__attribute__((noreturn, used)) void pause_main(void) {
    u64 set = (1UL << (SIGINT - 1)) | (1UL << (SIGTERM - 1)) | (1UL << (SIGCHLD - 1));
    if (syscall4(SYS_rt_sigprocmask, SIG_BLOCK, (i64)&set, 0, sizeof set) < 0) {
        say("pause: cannot block signals\n");
        exit_group(1);
    }
    for (;;) {
        i64 sig = syscall4(SYS_rt_sigtimedwait, (i64)&set, 0, 0, sizeof set);
        if (sig == SIGINT || sig == SIGTERM) {
            say("pause: shutting down\n");
            exit_group(0);
        }
        if (sig == SIGCHLD) {
            while (syscall4(SYS_wait4, -1, 0, WNOHANG, 0) > 0) {
            }
            continue;
        }
        if (sig < 0 && sig != -EINTR && sig != -EAGAIN) {
            say("pause: waiting for signals failed\n");
            exit_group(1);
        }
    }
}
