/*
 * The pod sandbox's init process: holds the pod's namespaces open, reaps orphaned children
 * (it is PID 1 in a shared PID namespace) and exits cleanly on SIGTERM or SIGINT.
 * Built statically so the image holds this one file and nothing else.
 */
#include <signal.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define VERSION "3.10"

static void reap(int signo) {
    (void)signo;
    /* Several children may exit behind one SIGCHLD; WNOHANG keeps the handler from blocking. */
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
}

static void stop(int signo) {
    /* _exit is async-signal-safe; exit() is not. 128 + signal is the shell's convention. */
    _exit(signo == SIGTERM || signo == SIGINT ? 0 : 128 + signo);
}

static void say(int fd, const char *text) {
    /* write(2) rather than stdio keeps the static binary small. */
    ssize_t unused = write(fd, text, strlen(text));
    (void)unused;
}

static int on(int signo, void (*handler)(int), int flags) {
    struct sigaction action;
    memset(&action, 0, sizeof(action));
    action.sa_handler = handler;
    action.sa_flags = flags;
    sigemptyset(&action.sa_mask);
    return sigaction(signo, &action, NULL);
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "-v") == 0) {
        say(STDOUT_FILENO, "pause " VERSION " (matchops)\n");
        return 0;
    }
    if (getpid() != 1) {
        /* Not fatal: the program also serves as a plain long sleeper outside a pod. */
        say(STDERR_FILENO, "pause: warning: not running as PID 1\n");
    }
    if (on(SIGINT, stop, 0) < 0 || on(SIGTERM, stop, 0) < 0 ||
        on(SIGCHLD, reap, SA_NOCLDSTOP | SA_RESTART) < 0) {
        say(STDERR_FILENO, "pause: sigaction failed\n");
        return 1;
    }
    for (;;) {
        pause();
    }
}
