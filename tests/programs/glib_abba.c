/* Two threads take two GLib mutexes (GMutex: futex-based, no pthread lock
 * inside) in opposite orders.
 *   glib_abba           one after the other (a condition keeps them apart):
 *                       a lock-order inversion; the second thread takes its
 *                       first mutex with g_mutex_trylock
 *   glib_abba deadlock  at once: both hold their first mutex before either
 *                       asks for its second, and they deadlock for good
 * Prints "mutex A 0x... B 0x..." and "thread ab TID" / "thread ba TID". */
#define _GNU_SOURCE
#include <glib.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static GMutex mutex_a, mutex_b;
static GMutex turn_lock;
static GCond turn_changed;
static int turn; /* 1: the first thread is done; in deadlock mode, the
		    number of threads holding their first mutex */
static int deadlock;

/* Wait until `turn` reaches `value` (after adding `add` to it). */
static void meet(int add, int value)
{
	g_mutex_lock(&turn_lock);
	turn += add;
	g_cond_broadcast(&turn_changed);
	while (turn < value)
		g_cond_wait(&turn_changed, &turn_lock);
	g_mutex_unlock(&turn_lock);
}

static gpointer lock_a_then_b(gpointer data)
{
	(void)data;
	printf("thread ab %d\n", gettid());
	g_mutex_lock(&mutex_a);
	if (deadlock)
		meet(1, 2);
	g_mutex_lock(&mutex_b);
	g_mutex_unlock(&mutex_b);
	g_mutex_unlock(&mutex_a);
	if (!deadlock)
		meet(1, 1);
	return NULL;
}

static gpointer lock_b_then_a(gpointer data)
{
	(void)data;
	if (!deadlock)
		meet(0, 1);
	printf("thread ba %d\n", gettid());
	if (deadlock) {
		g_mutex_lock(&mutex_b);
		meet(1, 2);
	} else if (!g_mutex_trylock(&mutex_b)) {
		return NULL;
	}
	g_mutex_lock(&mutex_a);
	g_mutex_unlock(&mutex_a);
	g_mutex_unlock(&mutex_b);
	return NULL;
}

int main(int argc, char **argv)
{
	GThread *ab, *ba;

	deadlock = argc > 1 && strcmp(argv[1], "deadlock") == 0;
	setvbuf(stdout, NULL, _IOLBF, 0);
	printf("mutex A %p B %p\n", (void *)&mutex_a, (void *)&mutex_b);
	ab = g_thread_new("ab", lock_a_then_b, NULL);
	ba = g_thread_new("ba", lock_b_then_a, NULL);
	g_thread_join(ab);
	g_thread_join(ba);
	return 0;
}
