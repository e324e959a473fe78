/* Lock misuse, one case per argv[1]:
 *   "wrlock-twice":  the thread write-locks a rwlock it holds for writing
 *                    (glibc returns EDEADLK)
 *   "errorcheck":    the thread locks an error-checking mutex it holds (EDEADLK)
 *   "recursive":     the thread locks a recursive mutex it holds: allowed
 *   "read-twice":    the thread read-locks a rwlock it holds for reading: allowed
 *   "unlock-other":  one thread locks a mutex, another unlocks it
 *   "unlock-fresh":  the main thread locks a mutex, a new thread whose first
 *                    lock operation that is unlocks it
 *   "exit-holding":  a thread exits holding a mutex; the process goes on
 *   "self-deadlock": the thread locks a normal mutex it holds: it hangs
 *   "unlock-twice":  the thread locks a mutex and unlocks it twice (with
 *                    "recursive" as argv[2]: a recursive mutex, locked twice
 *                    and unlocked three times)
 *   "rwlock-unlock-twice": the same with a rwlock, read-locked
 *   "unlock-garbage": the thread unlocks memory that holds no mutex (every
 *                    byte 0xff): glibc fails with EPERM
 * argv[2] "errorcheck" makes the mutex an error-checking one (musl records
 * the owner of those only).
 * Prints "mutex L 0x..." and "thread t TID" (the misusing thread). */
#include "facts.h"
#include <errno.h>
#include <pthread.h>
#include <string.h>

static pthread_mutex_t mutex;
static pthread_rwlock_t rwlock = PTHREAD_RWLOCK_INITIALIZER;
static pthread_barrier_t handed_over;

static void *exit_holding(void *arg)
{
	(void)arg;
	say_thread("t");
	pthread_mutex_lock(&mutex);
	return NULL; /* still holding it */
}

static void *unlock_it(void *arg)
{
	(void)arg;
	say_thread("t");
	pthread_mutex_unlock(&mutex); /* the main thread holds it */
	return NULL;
}

static void *lock_it(void *arg)
{
	(void)arg;
	pthread_mutex_lock(&mutex);
	pthread_barrier_wait(&handed_over);
	pthread_barrier_wait(
		&handed_over); /* the other thread unlocks it meanwhile */
	return NULL;
}

int main(int argc, char **argv)
{
	const char *mode = argc > 1 ? argv[1] : "wrlock-twice";
	pthread_mutexattr_t type;
	pthread_t thread;
	int result = 0;

	pthread_mutexattr_init(&type);
	if (strcmp(mode, "errorcheck") == 0 ||
	    (argc > 2 && strcmp(argv[2], "errorcheck") == 0))
		pthread_mutexattr_settype(&type, PTHREAD_MUTEX_ERRORCHECK);
	if (strcmp(mode, "recursive") == 0 ||
	    (argc > 2 && strcmp(argv[2], "recursive") == 0))
		pthread_mutexattr_settype(&type, PTHREAD_MUTEX_RECURSIVE);
	pthread_mutex_init(&mutex, &type);
	if (strncmp(mode, "wrlock", 6) == 0 || strncmp(mode, "read", 4) == 0 ||
	    strncmp(mode, "rwlock", 6) == 0)
		say_mutex("L", &rwlock);
	else
		say_mutex("L", &mutex);

	if (strcmp(mode, "wrlock-twice") == 0) {
		say_thread("t");
		pthread_rwlock_wrlock(&rwlock);
		result = pthread_rwlock_wrlock(&rwlock);
		pthread_rwlock_unlock(&rwlock);
	} else if (strcmp(mode, "read-twice") == 0) {
		say_thread("t");
		pthread_rwlock_rdlock(&rwlock);
		result = pthread_rwlock_rdlock(&rwlock);
		pthread_rwlock_unlock(&rwlock);
		pthread_rwlock_unlock(&rwlock);
	} else if (strcmp(mode, "errorcheck") == 0 ||
		   strcmp(mode, "recursive") == 0) {
		say_thread("t");
		pthread_mutex_lock(&mutex);
		result = pthread_mutex_lock(&mutex);
		if (result == 0)
			pthread_mutex_unlock(&mutex);
		pthread_mutex_unlock(&mutex);
	} else if (strcmp(mode, "unlock-other") == 0) {
		pthread_barrier_init(&handed_over, NULL, 2);
		pthread_create(&thread, NULL, lock_it, NULL);
		pthread_barrier_wait(&handed_over);
		say_thread("t");
		pthread_mutex_unlock(&mutex); /* the other thread holds it */
		pthread_barrier_wait(&handed_over);
		pthread_join(thread, NULL);
	} else if (strcmp(mode, "unlock-fresh") == 0) {
		pthread_mutex_lock(&mutex);
		pthread_create(&thread, NULL, unlock_it, NULL);
		pthread_join(thread, NULL);
	} else if (strcmp(mode, "self-deadlock") == 0) {
		say_thread("t");
		pthread_mutex_lock(&mutex);
		printf("line second %d\n", __LINE__ + 2);
		fflush(stdout);
		pthread_mutex_lock(&mutex); /* never returns */
	} else if (strcmp(mode, "unlock-twice") == 0) {
		int times = argc > 2 && strcmp(argv[2], "recursive") == 0 ? 2 :
									    1;

		say_thread("t");
		for (int i = 0; i < times; i++)
			pthread_mutex_lock(&mutex);
		for (int i = 0; i < times; i++)
			pthread_mutex_unlock(&mutex);
		result = pthread_mutex_unlock(&mutex); /* once more */
	} else if (strcmp(mode, "rwlock-unlock-twice") == 0) {
		say_thread("t");
		pthread_rwlock_rdlock(&rwlock);
		pthread_rwlock_unlock(&rwlock);
		result = pthread_rwlock_unlock(&rwlock); /* once more */
	} else if (strcmp(mode, "unlock-garbage") == 0) {
		static pthread_mutex_t garbage;

		memset(&garbage, 0xff, sizeof(garbage));
		say_thread("t");
		result = pthread_mutex_unlock(&garbage);
	} else if (strcmp(mode, "exit-holding") == 0) {
		pthread_create(&thread, NULL, exit_holding, NULL);
		pthread_join(thread, NULL);
	}
	printf("result %d\n", result);
	return 0;
}
