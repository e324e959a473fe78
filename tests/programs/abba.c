/* Two threads take two mutexes in opposite orders, one after the other
 * (a barrier keeps them from actually deadlocking): a lock-order inversion.
 * Prints "mutex A 0x... B 0x..." and "thread ab TID" / "thread ba TID". */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <unistd.h>

static pthread_mutex_t mutex_a = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t mutex_b = PTHREAD_MUTEX_INITIALIZER;
static pthread_barrier_t first_done;

static void *lock_a_then_b(void *arg)
{
	(void)arg;
	printf("thread ab %d\n", gettid());
	pthread_mutex_lock(&mutex_a);
	pthread_mutex_lock(&mutex_b);
	pthread_mutex_unlock(&mutex_b);
	pthread_mutex_unlock(&mutex_a);
	pthread_barrier_wait(&first_done);
	return NULL;
}

static void *lock_b_then_a(void *arg)
{
	(void)arg;
	pthread_barrier_wait(&first_done);
	printf("thread ba %d\n", gettid());
	pthread_mutex_lock(&mutex_b);
	pthread_mutex_lock(&mutex_a);
	pthread_mutex_unlock(&mutex_a);
	pthread_mutex_unlock(&mutex_b);
	return NULL;
}

int main(void)
{
	pthread_t ab, ba;

	setvbuf(stdout, NULL, _IOLBF, 0);
	printf("mutex A %p B %p\n", (void *)&mutex_a, (void *)&mutex_b);
	pthread_barrier_init(&first_done, NULL, 2);
	pthread_create(&ab, NULL, lock_a_then_b, NULL);
	pthread_create(&ba, NULL, lock_b_then_a, NULL);
	pthread_join(ab, NULL);
	pthread_join(ba, NULL);
	return 0;
}
