// C++ std::mutex with lock_guard: two functions take the same two mutexes in
// opposite orders. The report must name transfer_forward and transfer_backward.
#include <cstdio>
#include <mutex>
#include <thread>
#include <unistd.h>

static std::mutex first_mutex, second_mutex;

__attribute__((noinline)) void transfer_forward()
{
	std::lock_guard<std::mutex> outer(first_mutex);
	std::lock_guard<std::mutex> inner(second_mutex);
}

__attribute__((noinline)) void transfer_backward()
{
	std::lock_guard<std::mutex> outer(second_mutex);
	std::lock_guard<std::mutex> inner(first_mutex);
}

int main()
{
	std::printf("mutex A %p B %p\n", static_cast<void *>(&first_mutex),
		    static_cast<void *>(&second_mutex));
	std::fflush(stdout);
	std::thread([] {
		std::printf("thread forward %d\n", gettid());
		std::fflush(stdout);
		transfer_forward();
	}).join();
	std::thread([] {
		std::printf("thread backward %d\n", gettid());
		std::fflush(stdout);
		transfer_backward();
	}).join();
	return 0;
}
