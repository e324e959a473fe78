/* A program with lock functions of its own (a test-and-set spinlock that
 * sleeps on a futex when contended: no pthread lock), declared to igdeadlock
 * with --lock-functions: user_lock(ctx, lock) takes the lock as its SECOND
 * argument, user_trylock returns 1 when it took it, user_unlock releases.
 * Two threads take two locks in opposite orders, one after the other: a
 * lock-order inversion. Prints "mutex A 0x... B 0x..." and the threads.
 *   user_locks longjmp  the second thread's user_trylock takes its lock and
 *                       leaves by longjmp (as an error path or an exception
 *                       would): it never returns, so no return probe runs */
#define _GNU_SOURCE
#include <linux/futex.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

struct user_lock {
	int word; /* 0 free, 1 taken */
};

static struct user_lock lock_a, lock_b;
static pthread_barrier_t first_done;
static jmp_buf *escape; /* where user_trylock leaves to, if set */

__attribute__((noinline)) int user_trylock(struct user_lock *lock)
{
	int taken = __atomic_exchange_n(&lock->word, 1, __ATOMIC_ACQUIRE) == 0;

	if (escape && taken)
		longjmp(*escape, 1);
	return taken;
}

__attribute__((noinline)) void user_lock(const char *who,
					 struct user_lock *lock)
{
	(void)who;
	while (__atomic_exchange_n(&lock->word, 1, __ATOMIC_ACQUIRE) != 0)
		syscall(SYS_futex, &lock->word, FUTEX_WAIT_PRIVATE, 1, NULL,
			NULL, 0);
}

__attribute__((noinline)) void user_unlock(struct user_lock *lock)
{
	__atomic_store_n(&lock->word, 0, __ATOMIC_RELEASE);
	syscall(SYS_futex, &lock->word, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
}

static void *lock_a_then_b(void *arg)
{
	(void)arg;
	printf("thread ab %d\n", gettid());
	user_lock("ab", &lock_a);
	user_lock("ab", &lock_b);
	user_unlock(&lock_b);
	user_unlock(&lock_a);
	pthread_barrier_wait(&first_done);
	return NULL;
}

static void *lock_b_then_a(void *arg)
{
	pthread_barrier_wait(&first_done);
	printf("thread ba %d\n", gettid());
	if (arg) {
		jmp_buf out;

		escape = &out;
		if (setjmp(out) == 0 && !user_trylock(&lock_b))
			return NULL;
		escape = NULL;
	} else if (!user_trylock(&lock_b)) {
		return NULL;
	}
	user_lock("ba", &lock_a);
	user_unlock(&lock_a);
	user_unlock(&lock_b);
	return NULL;
}

int main(int argc, char **argv)
{
	int escaping = argc > 1 && strcmp(argv[1], "longjmp") == 0;
	pthread_t ab, ba;

	setvbuf(stdout, NULL, _IOLBF, 0);
	printf("mutex A %p B %p\n", (void *)&lock_a, (void *)&lock_b);
	pthread_barrier_init(&first_done, NULL, 2);
	pthread_create(&ab, NULL, lock_a_then_b, NULL);
	pthread_create(&ba, NULL, lock_b_then_a, escaping ? &escaping : NULL);
	pthread_join(ab, NULL);
	pthread_join(ba, NULL);
	return 0;
}
