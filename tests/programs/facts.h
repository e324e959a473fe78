/* Test programs print what the tests check, on lines the tests parse:
 * "mutex NAME 0xADDR ..." and "thread NAME TID". */
#ifndef FACTS_H
#define FACTS_H
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <unistd.h>

static inline void say_mutex(const char *name, const void *address)
{
	printf("mutex %s %p\n", name, address);
	fflush(stdout);
}

static inline void say_thread(const char *name)
{
	printf("thread %s %d\n", name, gettid());
	fflush(stdout);
}

/* Run body in a thread of its own and wait for it: steps of a test program
 * happen one after the other, in distinct threads. */
static inline void run_in_thread(void *(*body)(void *))
{
	pthread_t thread;

	pthread_create(&thread, NULL, body, NULL);
	pthread_join(thread, NULL);
}
#endif
