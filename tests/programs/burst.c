/* Lock-order inversions while threads start and end all the time: every
 * thread start maps a stack (and takes the process's mmap lock for writing),
 * and so does every mmap and munmap of the threads beside, so the gadget's
 * frame lookups, which never wait for that lock, often find it taken. PAIRS
 * pairs of mutexes are each taken A then B by one thread and B then A by
 * another, one pair after the other, each pair from functions of its own (no
 * other stack of the process names the same code), while a burst of
 * short-lived threads and mappings runs beside them. Prints "mutex A<i> ..."
 * and "mutex B<i> ...". */
#include "facts.h"
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <sys/mman.h>

#define PAIRS 16
#define BURST 4 /* threads starting short-lived threads, all the time */
#define MAPPED (8 << 20) /* what each of them maps and unmaps in between */

static pthread_mutex_t a[PAIRS], b[PAIRS];
static atomic_int done;

static void *nothing(void *arg)
{
	return arg;
}

static void *start_threads(void *arg)
{
	pthread_t t;
	void *area;

	(void)arg;
	while (!atomic_load(&done)) {
		if (pthread_create(&t, NULL, nothing, NULL) == 0)
			pthread_join(t, NULL);
		area = mmap(NULL, MAPPED, PROT_READ | PROT_WRITE,
			    MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
		if (area != MAP_FAILED)
			munmap(area, MAPPED);
	}
	return NULL;
}

/* pair I's two orders, each in a function of its own */
#define PAIR(I)                              \
	static void *a_then_b_##I(void *arg) \
	{                                    \
		pthread_mutex_lock(&a[I]);   \
		pthread_mutex_lock(&b[I]);   \
		pthread_mutex_unlock(&b[I]); \
		pthread_mutex_unlock(&a[I]); \
		return arg;                  \
	}                                    \
	static void *b_then_a_##I(void *arg) \
	{                                    \
		pthread_mutex_lock(&b[I]);   \
		pthread_mutex_lock(&a[I]);   \
		pthread_mutex_unlock(&a[I]); \
		pthread_mutex_unlock(&b[I]); \
		return arg;                  \
	}

PAIR(0)
PAIR(1)
PAIR(2)
PAIR(3)
PAIR(4)
PAIR(5)
PAIR(6)
PAIR(7)
PAIR(8)
PAIR(9)
PAIR(10)
PAIR(11)
PAIR(12)
PAIR(13)
PAIR(14)
PAIR(15)

static void *(*const orders[PAIRS][2])(void *) = {
	{ a_then_b_0, b_then_a_0 },   { a_then_b_1, b_then_a_1 },
	{ a_then_b_2, b_then_a_2 },   { a_then_b_3, b_then_a_3 },
	{ a_then_b_4, b_then_a_4 },   { a_then_b_5, b_then_a_5 },
	{ a_then_b_6, b_then_a_6 },   { a_then_b_7, b_then_a_7 },
	{ a_then_b_8, b_then_a_8 },   { a_then_b_9, b_then_a_9 },
	{ a_then_b_10, b_then_a_10 }, { a_then_b_11, b_then_a_11 },
	{ a_then_b_12, b_then_a_12 }, { a_then_b_13, b_then_a_13 },
	{ a_then_b_14, b_then_a_14 }, { a_then_b_15, b_then_a_15 },
};

int main(void)
{
	pthread_t burst[BURST], t;
	char name[16];

	for (long i = 0; i < PAIRS; i++) {
		pthread_mutex_init(&a[i], NULL);
		pthread_mutex_init(&b[i], NULL);
		snprintf(name, sizeof(name), "A%ld", i);
		say_mutex(name, &a[i]);
		snprintf(name, sizeof(name), "B%ld", i);
		say_mutex(name, &b[i]);
	}
	for (int i = 0; i < BURST; i++)
		pthread_create(&burst[i], NULL, start_threads, NULL);
	for (int i = 0; i < PAIRS; i++) {
		for (int order = 0; order < 2; order++) {
			pthread_create(&t, NULL, orders[i][order], NULL);
			pthread_join(t, NULL);
		}
	}
	atomic_store(&done, 1);
	for (int i = 0; i < BURST; i++)
		pthread_join(burst[i], NULL);
	return 0;
}
