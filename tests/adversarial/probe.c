/* Probes of the kernel surface a sandbox may reach, run inside by tests/adversarial (built
 * with attack.c, static, bind-mounted at /attack).
 *
 * Like attack.c, every attempt prints one line "<attempt>: ok" or "<attempt>: <ERRNO name>"
 * (or "<attempt>: killed-<signal>") and the program exits 0. Each call gets arguments that
 * are harmless if it goes through (a bad fd, a missing path, a null structure), so a missing
 * defence shows as "ok" or as the kernel's own error - never as EPERM, which only the
 * filter (or a missing capability) gives. Calls that change the calling process (unshare,
 * clone, personality, setns) run in a child of their own.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/personality.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#ifndef CLONE_NEWCGROUP
#define CLONE_NEWCGROUP 0x02000000
#endif
#ifndef CLONE_NEWTIME
#define CLONE_NEWTIME 0x00000080
#endif

static void report(const char *what, long result) {
    if (result < 0)
        printf("%s: %s\n", what, strerrorname_np(errno) ? strerrorname_np(errno) : "E?");
    else
        printf("%s: ok\n", what);
    fflush(stdout);
}

/* Run `call` in a child; the child exits 0 on success, 100+errno on failure. */
static void in_child(const char *what, long (*call)(long), long arg) {
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        long result = call(arg);
        _exit(result < 0 ? 100 + errno : 0);
    }
    int status;
    waitpid(pid, &status, 0);
    if (WIFSIGNALED(status)) {
        printf("%s: killed-%d\n", what, WTERMSIG(status));
    } else if (WEXITSTATUS(status) == 0) {
        printf("%s: ok\n", what);
    } else {
        errno = WEXITSTATUS(status) - 100;
        report(what, -1);
    }
    fflush(stdout);
}

static long do_unshare(long flags) { return unshare((int)flags); }
static long do_setns(long nstype) {
    int fd = open("/proc/self/ns/uts", O_RDONLY);
    return syscall(SYS_setns, fd, (int)nstype);
}
static long do_traceme(long unused) { (void)unused; return ptrace(PTRACE_TRACEME, 0, 0, 0); }
static long do_personality(long persona) { return syscall(SYS_personality, (unsigned long)persona); }
static long do_clone(long flags) {
    long pid = syscall(SYS_clone, (unsigned long)flags | SIGCHLD, 0L, 0L, 0L, 0L);
    if (pid == 0)
        _exit(0);
    if (pid > 0)
        waitpid((pid_t)pid, NULL, 0);
    return pid;
}
static long do_clone3(long flags) {
    struct { unsigned long long flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls; } args;
    memset(&args, 0, sizeof args);
    args.flags = (unsigned long long)flags;
    args.exit_signal = SIGCHLD;
    long pid = syscall(435, &args, sizeof args);
    if (pid == 0)
        _exit(0);
    if (pid > 0)
        waitpid((pid_t)pid, NULL, 0);
    return pid;
}

/* unshare(CLONE_NEWUSER) through the 32-bit entry (int 0x80, i386's number 310). */
static long do_i386_unshare(long flags) {
    long result;
    __asm__ volatile("int $0x80" : "=a"(result) : "a"(310L), "b"(flags) : "memory");
    if (result < 0) {
        errno = (int)-result;
        return -1;
    }
    return result;
}

/* unshare through the x32 ABI: x86_64's number with bit 30 set. */
static long do_x32_unshare(long flags) { return syscall(0x40000000L | SYS_unshare, flags); }

static const struct { const char *name; long flag; } namespaces[] = {
    {"user", CLONE_NEWUSER}, {"mount", CLONE_NEWNS}, {"cgroup", CLONE_NEWCGROUP}, {"uts", CLONE_NEWUTS},
    {"ipc", CLONE_NEWIPC}, {"pid", CLONE_NEWPID}, {"net", CLONE_NEWNET},
};

/* Every system call the default filter denies, with harmless arguments. */
static int denied(void) {
    char what[64];
    for (size_t i = 0; i < sizeof namespaces / sizeof *namespaces; i++) {
        snprintf(what, sizeof what, "unshare-%s", namespaces[i].name);
        in_child(what, do_unshare, namespaces[i].flag);
        snprintf(what, sizeof what, "clone-%s", namespaces[i].name);
        in_child(what, do_clone, namespaces[i].flag);
    }
    in_child("unshare-time", do_unshare, CLONE_NEWTIME);
    in_child("clone3", do_clone3, 0);
    in_child("setns", do_setns, CLONE_NEWUTS);
    in_child("personality-read-implies-exec", do_personality, READ_IMPLIES_EXEC);
    in_child("personality-addr-no-randomize", do_personality, ADDR_NO_RANDOMIZE);
    in_child("unshare-user-i386", do_i386_unshare, CLONE_NEWUSER);
    in_child("unshare-user-x32", do_x32_unshare, CLONE_NEWUSER);

    report("keyctl", syscall(SYS_keyctl, 0 /* KEYCTL_GET_KEYRING_ID */, -3 /* @s */, 0));
    report("add_key", syscall(SYS_add_key, "user", "sbx-probe", "x", 1, -2 /* @p */));
    report("request_key", syscall(SYS_request_key, "user", "sbx-probe-missing", NULL, 0));
    report("bpf", syscall(SYS_bpf, 0 /* BPF_MAP_CREATE */, NULL, 0));
    report("perf_event_open", syscall(SYS_perf_event_open, NULL, 0, -1, -1, 0));
    report("userfaultfd", syscall(SYS_userfaultfd, O_CLOEXEC | 1 /* UFFD_USER_MODE_ONLY */));
    unsigned char params[120];
    memset(params, 0, sizeof params);
    report("io_uring_setup", syscall(425, 1, params));
    report("io_uring_enter", syscall(426, -1, 0, 0, 0, NULL, 0));
    report("io_uring_register", syscall(427, -1, 0, NULL, 0));
    unsigned char handle[136];
    memset(handle, 0, sizeof handle);
    *(unsigned int *)handle = 128;
    int mount_id;
    report("name_to_handle_at", syscall(SYS_name_to_handle_at, AT_FDCWD, "/", handle, &mount_id, 0));
    report("open_by_handle_at", syscall(SYS_open_by_handle_at, -1, handle, O_RDONLY));
    report("kexec_load", syscall(SYS_kexec_load, 0, 0, NULL, 0));
    report("kexec_file_load", syscall(SYS_kexec_file_load, -1, -1, 0, "", 0));
    report("init_module", syscall(SYS_init_module, "", 0, ""));
    report("finit_module", syscall(SYS_finit_module, -1, "", 0));
    report("delete_module", syscall(SYS_delete_module, "sbx_no_such_module", O_NONBLOCK));
    report("create_module", syscall(174, "", 0));
    report("get_kernel_syms", syscall(177, NULL));
    report("query_module", syscall(178, "", 0, NULL, 0, NULL));
    report("mount", syscall(SYS_mount, "none", "/sbx-no-such-dir", "tmpfs", 0, ""));
    report("umount2", syscall(SYS_umount2, "/sbx-no-such-dir", 0));
    report("pivot_root", syscall(SYS_pivot_root, "/sbx-no-such-dir", "/sbx-no-such-dir"));
    report("open_tree", syscall(428, -1, "/sbx-no-such-dir", 0));
    report("move_mount", syscall(429, -1, "", -1, "", 0));
    report("fsopen", syscall(430, "sbx-no-such-fs", 0));
    report("fsconfig", syscall(431, -1, 0, NULL, NULL, 0));
    report("fsmount", syscall(432, -1, 0, 0));
    report("fspick", syscall(433, -1, "", 0));
    report("mount_setattr", syscall(442, -1, "", 0, NULL, 0));
    report("syslog", syscall(SYS_syslog, 10 /* SYSLOG_ACTION_SIZE_BUFFER */, NULL, 0));
    report("acct", syscall(SYS_acct, "/sbx-no-such-file"));
    report("swapon", syscall(SYS_swapon, "/sbx-no-such-file", 0));
    report("swapoff", syscall(SYS_swapoff, "/sbx-no-such-file"));
    report("reboot", syscall(SYS_reboot, 0, 0, 0, NULL));  /* wrong magic: EINVAL if it got through */
    report("settimeofday", syscall(SYS_settimeofday, NULL, NULL));
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    report("clock_settime", syscall(SYS_clock_settime, CLOCK_REALTIME, &now));
    unsigned char timex[208];
    memset(timex, 0, sizeof timex);  /* modes 0: only reads the clock's state */
    report("clock_adjtime", syscall(SYS_clock_adjtime, CLOCK_REALTIME, timex));
    report("lookup_dcookie", syscall(SYS_lookup_dcookie, 0, NULL, 0));
    report("quotactl", syscall(SYS_quotactl, 0, NULL, 0, NULL));
    report("nfsservctl", syscall(SYS_nfsservctl, 0, NULL, NULL));
    report("uselib", syscall(SYS_uselib, "/sbx-no-such-file"));
    report("ustat", syscall(SYS_ustat, 0, NULL));
    report("sysfs", syscall(SYS_sysfs, 1, "sbx-no-such-fs"));
    report("_sysctl", syscall(SYS__sysctl, NULL));
    report("iopl", syscall(SYS_iopl, 0));
    report("ioperm", syscall(SYS_ioperm, 0, 0, 0));
    report("vhangup", syscall(SYS_vhangup));
    report("sethostname", syscall(SYS_sethostname, "sandbox", 7));
    report("setdomainname", syscall(SYS_setdomainname, "sandbox", 7));
    report("fanotify_init", syscall(SYS_fanotify_init, 0, 0));
    report("socket-vsock", syscall(SYS_socket, 40 /* AF_VSOCK */, SOCK_STREAM, 0));
    report("set_mempolicy", syscall(SYS_set_mempolicy, 0, NULL, 0));
    return 0;
}

/* What the filter must still let through. */
static int allowed(void) {
    in_child("clone-plain", do_clone, 0);
    in_child("unshare-files", do_unshare, CLONE_FILES);
    in_child("personality-linux", do_personality, PER_LINUX);
    in_child("personality-query", do_personality, 0xffffffffL);
    in_child("personality-linux32", do_personality, PER_LINUX32);
    in_child("personality-uname26", do_personality, UNAME26);
    in_child("personality-linux32-uname26", do_personality, PER_LINUX32 | UNAME26);
    unsigned char timex[208];
    memset(timex, 0, sizeof timex);  /* modes 0: read only */
    report("adjtimex-read", syscall(SYS_adjtimex, timex));
    report("chroot", syscall(SYS_chroot, "/"));
    report("socket-unix", syscall(SYS_socket, AF_UNIX, SOCK_STREAM, 0));
    int fds[2];
    report("pipe2", syscall(SYS_pipe2, fds, O_CLOEXEC));
    in_child("ptrace-traceme", do_traceme, 0);
    return 0;
}

/* The user-namespace attack on the cgroup limits: a user namespace, a cgroup namespace,
 * the cgroup file systems mounted, the limits lifted; then a host process's cgroup. */
static int cgroups(const char *host_cgroup) {
    report("unshare-user-mount-cgroup", unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWCGROUP));
    int fd = open("/proc/self/uid_map", O_WRONLY);
    report("uid-map", fd < 0 ? -1 : write(fd, "0 0 1", 5));
    mkdir("/tmp/v1", 0755);
    mkdir("/tmp/v2", 0755);
    mkdir("/tmp/mem", 0755);
    report("mount-cgroup-v1-pids", mount("cgroup", "/tmp/v1", "cgroup", 0, "pids"));
    report("mount-cgroup-v1-memory", mount("cgroup", "/tmp/mem", "cgroup", 0, "memory"));
    report("mount-cgroup-v2", mount("cgroup2", "/tmp/v2", "cgroup2", 0, ""));
    const char *writes[][2] = {
        {"/tmp/v1/pids.max", "max"}, {"/tmp/mem/memory.limit_in_bytes", "-1"},
        {"/tmp/mem/memory.memsw.limit_in_bytes", "-1"}, {"/tmp/v2/pids.max", "max"},
        {"/tmp/v2/memory.max", "max"}, {"/sys/fs/cgroup/pids/pids.max", "max"},
        {"/sys/fs/cgroup/memory/memory.limit_in_bytes", "-1"},
    };
    for (size_t i = 0; i < sizeof writes / sizeof *writes; i++) {
        char what[128];
        snprintf(what, sizeof what, "write %s", writes[i][0]);
        int target = open(writes[i][0], O_WRONLY);
        report(what, target < 0 ? -1 : write(target, writes[i][1], strlen(writes[i][1])));
    }
    const char *places[] = {"/tmp/v2", "/sys/fs/cgroup/unified", "/sys/fs/cgroup"};
    const char *files[] = {"cgroup.kill", "cgroup.freeze"};
    for (size_t p = 0; p < 3; p++) {
        for (size_t f = 0; f < 2; f++) {
            char path[4096], what[128];
            snprintf(path, sizeof path, "%s%s/%s", places[p], host_cgroup, files[f]);
            snprintf(what, sizeof what, "host %s %s", places[p], files[f]);
            int target = open(path, O_WRONLY);
            report(what, target < 0 ? -1 : write(target, "1", 1));
        }
    }
    return 0;
}

/* The kernel keyrings: what the session keyring is, whether a host key can be read,
 * and a key added inside (to @s). */
static int keys(long host_key, const char *add_description) {
    long session = syscall(SYS_keyctl, 0 /* KEYCTL_GET_KEYRING_ID */, -3 /* @s */, 0);
    report("session-keyring", session);
    if (session >= 0)
        printf("session-id %ld\n", session);
    char buffer[256];
    long n = syscall(SYS_keyctl, 11 /* KEYCTL_READ */, host_key, buffer, sizeof buffer - 1);
    report("read-host-key", n);
    if (n > 0) {
        buffer[n < (long)sizeof buffer ? n : (long)sizeof buffer - 1] = 0;
        printf("host-key-payload %s\n", buffer);
    }
    report("search-host-key", syscall(SYS_keyctl, 10 /* KEYCTL_SEARCH */, -3, "user", "sbxtest", 0));
    if (add_description[0])
        report("add-key", syscall(SYS_add_key, "user", add_description, "inside", 6, -3 /* @s */));
    fflush(stdout);
    return 0;
}

/* Abstract unix sockets: not files, so no mount hides them; the network namespace does. */
static int abstract(const char *name) {
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un address;
    memset(&address, 0, sizeof address);
    address.sun_family = AF_UNIX;
    size_t length = strlen(name);
    memcpy(address.sun_path + 1, name, length);
    long result = connect(fd, (struct sockaddr *)&address, (socklen_t)(sizeof address.sun_family + 1 + length));
    report("connect-abstract", result);
    if (result == 0) {
        char reply[64] = "";
        ssize_t n = read(fd, reply, sizeof reply - 1);
        if (n > 0)
            printf("reply %.*s\n", (int)n, reply);
    }
    return 0;
}

/* Leave the terminal and descriptors it was given changed: raw mode without echo, a tiny
 * window, O_NONBLOCK on stdin and O_APPEND on stdout (the caller's own, without -t). */
static int tty_mess(void) {
    struct termios mode;
    if (tcgetattr(0, &mode) == 0) {
        cfmakeraw(&mode);
        mode.c_lflag &= ~(tcflag_t)ECHO;
        report("raw-no-echo", tcsetattr(0, TCSANOW, &mode));
        struct winsize size = {.ws_row = 11, .ws_col = 33};
        report("window-size", ioctl(0, TIOCSWINSZ, &size));
    }
    report("stdin-nonblock", fcntl(0, F_SETFL, fcntl(0, F_GETFL) | O_NONBLOCK));
    report("stdout-append", fcntl(1, F_SETFL, fcntl(1, F_GETFL) | O_APPEND));
    return 0;
}

/* Start up to n children that wait; say how many could be started. */
static int forks(int n) {
    pid_t children[4096];
    int started = 0;
    for (int i = 0; i < n && i < 4096; i++) {
        pid_t pid = fork();
        if (pid == 0) {
            pause();
            _exit(0);
        }
        if (pid < 0)
            break;
        children[started++] = pid;
    }
    printf("forks-started %d\n", started);
    fflush(stdout);
    for (int i = 0; i < started; i++) {
        kill(children[i], SIGKILL);
        waitpid(children[i], NULL, 0);
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc >= 2 && !strcmp(argv[1], "denied"))
        return denied();
    if (argc >= 2 && !strcmp(argv[1], "allowed"))
        return allowed();
    if (argc == 3 && !strcmp(argv[1], "cgroups"))
        return cgroups(argv[2]);
    if (argc == 4 && !strcmp(argv[1], "keys"))
        return keys(atol(argv[2]), argv[3]);
    if (argc == 3 && !strcmp(argv[1], "abstract"))
        return abstract(argv[2]);
    if (argc == 2 && !strcmp(argv[1], "tty-mess"))
        return tty_mess();
    if (argc == 3 && !strcmp(argv[1], "forks"))
        return forks(atoi(argv[2]));
    fprintf(stderr, "usage: probe denied|allowed|cgroups HOST-CGROUP|keys KEY-ID ADD-DESC|abstract NAME|tty-mess|forks N\n");
    return 2;
}
