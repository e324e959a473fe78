/* The pod sandbox's first process ("pause"): it holds the pod's namespaces,
 * reaps the zombies that end up with it as PID 1, and exits on SIGINT or
 * SIGTERM. Built statically by cluster.sh, since no image can be pulled. */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static volatile sig_atomic_t stop_signal;

static void on_stop(int sig) { stop_signal = sig; }

static void on_child(int sig)
{
	(void)sig;
	while (waitpid(-1, NULL, WNOHANG) > 0)
		;
}

static void handle(int sig, void (*fn)(int), int flags)
{
	struct sigaction sa;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = fn;
	sa.sa_flags = flags;
	sigemptyset(&sa.sa_mask);
	sigaction(sig, &sa, NULL);
}

int main(int argc, char **argv)
{
	if (argc > 1 && strcmp(argv[1], "-v") == 0) {
		puts("igdeadlock pause 1");
		return 0;
	}
	if (getpid() != 1)
		fputs("pause: warning: not PID 1\n", stderr);
	handle(SIGINT, on_stop, 0);
	handle(SIGTERM, on_stop, 0);
	handle(SIGCHLD, on_child, SA_NOCLDSTOP | SA_RESTART);
	while (!stop_signal)
		pause();
	fprintf(stderr, "pause: shutting down on signal %d\n", (int)stop_signal);
	return 0;
}
