/* SPDX-License-Identifier: MIT */
/* test_fair.c: connection fairness: head deadlines, reclaim of the oldest waiting connection, per-address limits, watch streams apart. */
#include <arpa/inet.h>
#include <check.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>

#include "api/fair.h"

/* What the fake kill saw. */
static int killed_fd[64];
static enum fair_reason killed_why[64];
static size_t nkilled;

static void fake_kill(void *ctx, int fd, enum fair_reason why)
{
	(void)ctx;
	ck_assert_uint_lt(nkilled, 64);
	killed_fd[nkilled] = fd;
	killed_why[nkilled] = why;
	nkilled++;
}

/* Descriptors the fake says have unread input. */
static bool input_on[64];

static bool fake_has_input(void *ctx, int fd)
{
	(void)ctx;
	return fd >= 0 && fd < 64 && input_on[fd];
}

static struct fair *mk(size_t max, size_t per_ip)
{
	struct fair_limits l = { .max_conns = max, .per_ip = per_ip, .head_ms = 5000,
				 .idle_ms = 30000, .kill = fake_kill, .has_input = fake_has_input };
	struct fair *f = NULL;

	nkilled = 0;
	memset(input_on, 0, sizeof(input_on));
	ck_assert_int_eq(fair_new(&l, &f), 0);
	return f;
}

static struct sockaddr_in v4(const char *ip, int port)
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };

	ck_assert_int_eq(inet_pton(AF_INET, ip, &sa.sin_addr), 1);
	return sa;
}

/* Open fd from ip at now; returns the record, *refused set. */
static struct fair_conn *open_ip(struct fair *f, int fd, const char *ip, int64_t now, bool *refused)
{
	struct sockaddr_in sa = v4(ip, 40000 + fd);
	struct fair_conn *c = NULL;
	bool r = true;

	ck_assert_int_eq(fair_open(f, fd, (struct sockaddr *)&sa, sizeof(sa), now, &c, &r), 0);
	ck_assert_ptr_nonnull(c);
	if (refused)
		*refused = r;
	return c;
}

static struct fair_conn *open_local(struct fair *f, int fd, int64_t now)
{
	bool refused;
	struct fair_conn *c = open_ip(f, fd, "127.0.0.1", now, &refused);

	ck_assert(!refused);
	return c;
}

START_TEST(head_deadline)
{
	struct fair *f = mk(10, 10);
	struct fair_conn *a = open_local(f, 3, 0), *b = open_local(f, 4, 100),
			 *c = open_local(f, 5, 200);
	struct fair_counts n;

	fair_busy(f, b); /* its head came in time */
	ck_assert_int_eq(fair_expire(f, 4999), 5000);
	ck_assert_uint_eq(nkilled, 0);
	/* The deadline counts from the connection, whatever it trickled. */
	ck_assert_int_eq(fair_expire(f, 5000), 5200);
	ck_assert_uint_eq(nkilled, 1);
	ck_assert_int_eq(killed_fd[0], 3);
	ck_assert_int_eq(killed_why[0], FAIR_HEAD_TIMEOUT);
	ck_assert_int_eq(fair_expire(f, 6000), INT64_MAX);
	ck_assert_uint_eq(nkilled, 2);
	ck_assert_int_eq(killed_fd[1], 5);
	fair_counts(f, &n);
	ck_assert_uint_eq(n.regular, 1);
	ck_assert_uint_eq(n.closing, 2);
	/* Killed records are not killed twice, and go when closed. */
	ck_assert_int_eq(fair_expire(f, 100000), INT64_MAX);
	ck_assert_uint_eq(nkilled, 2);
	fair_close(f, a);
	fair_close(f, c);
	/* The busy one answers, then idles: its next head within idle_ms. */
	fair_idle(f, b, 7000);
	ck_assert_int_eq(fair_expire(f, 36999), 37000);
	ck_assert_uint_eq(nkilled, 2);
	fair_expire(f, 37000);
	ck_assert_uint_eq(nkilled, 3);
	ck_assert_int_eq(killed_fd[2], 4);
	fair_close(f, b);
	fair_counts(f, &n);
	ck_assert_uint_eq(n.regular + n.closing + n.watch, 0);
	fair_free(f);
}
END_TEST

START_TEST(reclaim_oldest_waiting)
{
	struct fair *f = mk(3, 64);
	struct fair_conn *a = open_local(f, 3, 0), *b = open_local(f, 4, 10), *c = open_local(f, 5, 20);
	struct fair_conn *d, *e, *g;
	bool refused;

	/* Full: the next one makes the oldest waiting one go. */
	d = open_ip(f, 6, "127.0.0.1", 30, &refused);
	ck_assert(!refused);
	ck_assert_uint_eq(nkilled, 1);
	ck_assert_int_eq(killed_fd[0], 3);
	ck_assert_int_eq(killed_why[0], FAIR_RECLAIMED);
	fair_close(f, a);
	/* A busy one is never reclaimed: c (waiting) goes before b. */
	fair_busy(f, b);
	e = open_ip(f, 7, "127.0.0.1", 40, &refused);
	ck_assert(!refused);
	ck_assert_int_eq(killed_fd[1], 5);
	fair_close(f, c);
	/* An idle keep-alive one counts from its last answer: b answered at
	 * 50, so d (waiting since 30) is older and goes first. */
	fair_idle(f, b, 50);
	g = open_ip(f, 8, "127.0.0.1", 60, &refused);
	ck_assert(!refused);
	ck_assert_int_eq(killed_fd[2], 6);
	fair_close(f, d);
	fair_close(f, b);
	fair_close(f, e);
	fair_close(f, g);
	fair_free(f);
}
END_TEST

START_TEST(reclaim_skips_unread_requests)
{
	struct fair *f = mk(3, 64);
	struct fair_conn *a = open_local(f, 3, 0), *b = open_local(f, 4, 10), *c = open_local(f, 5, 20);
	struct fair_conn *d, *e;
	bool refused;

	/* a and b have sent their request; nobody has read it yet. */
	input_on[3] = input_on[4] = true;
	d = open_ip(f, 6, "127.0.0.1", 30, &refused);
	ck_assert(!refused);
	ck_assert_uint_eq(nkilled, 1);
	ck_assert_int_eq(killed_fd[0], 5);
	fair_close(f, c);
	/* Only such ones left besides the newest: refused, not lost. */
	input_on[6] = true;
	e = open_ip(f, 7, "127.0.0.1", 40, &refused);
	ck_assert(refused);
	ck_assert_uint_eq(nkilled, 1);
	fair_close(f, a);
	fair_close(f, b);
	fair_close(f, d);
	fair_close(f, e);
	fair_free(f);
}
END_TEST

START_TEST(refuse_when_all_busy)
{
	struct fair *f = mk(2, 64);
	struct fair_conn *a = open_local(f, 3, 0), *b = open_local(f, 4, 0), *c, *d;
	struct fair_counts n;
	bool refused = false;

	ck_assert(fair_busy(f, a));
	ck_assert(fair_busy(f, b));
	c = open_ip(f, 5, "127.0.0.1", 1, &refused);
	ck_assert(refused);
	/* Kept for its 503, outside the count: nothing killed yet. */
	ck_assert_uint_eq(nkilled, 0);
	fair_counts(f, &n);
	ck_assert_uint_eq(n.regular, 2);
	ck_assert_uint_eq(n.refused, 1);
	/* Its head arrives: not admitted, even though a slot freed meanwhile
	 * (its client is already being told 503). */
	fair_idle(f, a, 2);
	ck_assert(!fair_busy(f, c));
	fair_idle(f, c, 3);
	fair_counts(f, &n);
	ck_assert_uint_eq(n.regular, 2);
	ck_assert_uint_eq(n.refused, 1);
	/* A refused one that never sends its head has the head deadline. */
	d = open_ip(f, 6, "127.0.0.1", 4, &refused);
	ck_assert(!refused); /* a (idle) was reclaimed for it */
	ck_assert_uint_eq(nkilled, 1);
	ck_assert_int_eq(killed_fd[0], 3);
	fair_expire(f, 5001);
	ck_assert_uint_eq(nkilled, 2);
	ck_assert_int_eq(killed_fd[1], 5);
	ck_assert_int_eq(killed_why[1], FAIR_HEAD_TIMEOUT);
	fair_close(f, c);
	fair_close(f, a);
	fair_close(f, b);
	fair_close(f, d);
	fair_counts(f, &n);
	ck_assert_uint_eq(n.regular + n.refused + n.closing + n.watch, 0);
	fair_free(f);
}
END_TEST

START_TEST(per_address_limit)
{
	struct fair *f = mk(100, 2);
	struct fair_conn *c[8];
	bool refused;

	c[0] = open_ip(f, 3, "10.0.0.1", 0, &refused);
	c[1] = open_ip(f, 4, "10.0.0.1", 1, &refused);
	ck_assert_uint_eq(nkilled, 0);
	/* A third from the same address: its own oldest waiting one goes. */
	c[2] = open_ip(f, 5, "10.0.0.1", 2, &refused);
	ck_assert(!refused);
	ck_assert_uint_eq(nkilled, 1);
	ck_assert_int_eq(killed_fd[0], 3);
	/* All of its connections busy: the next is refused. */
	fair_busy(f, c[1]);
	fair_busy(f, c[2]);
	c[3] = open_ip(f, 6, "10.0.0.1", 3, &refused);
	ck_assert(refused);
	ck_assert(!fair_busy(f, c[3]));
	/* Another address is not affected, nor is loopback (its clients
	 * share one address). */
	c[4] = open_ip(f, 7, "10.0.0.2", 4, &refused);
	ck_assert(!refused);
	c[5] = open_local(f, 8, 5);
	c[6] = open_local(f, 9, 6);
	c[7] = open_local(f, 10, 7);
	ck_assert_uint_eq(nkilled, 1);
	/* A watch stream leaves the address's count. */
	fair_watch(f, c[1]);
	fair_close(f, c[3]);
	c[3] = open_ip(f, 11, "10.0.0.1", 8, &refused);
	ck_assert(!refused);
	ck_assert_uint_eq(nkilled, 1);
	for (size_t i = 0; i < 8; i++)
		fair_close(f, c[i]);
	fair_free(f);
}
END_TEST

START_TEST(watch_streams_apart)
{
	struct fair *f = mk(2, 64);
	struct fair_conn *w = open_local(f, 3, 0), *a, *b;
	struct fair_counts n;

	fair_busy(f, w);
	fair_watch(f, w);
	a = open_local(f, 4, 1);
	b = open_local(f, 5, 2);
	/* Two regular ones beside the stream: nothing reclaimed. */
	ck_assert_uint_eq(nkilled, 0);
	fair_counts(f, &n);
	ck_assert_uint_eq(n.regular, 2);
	ck_assert_uint_eq(n.watch, 1);
	/* A stream has no head deadline. */
	fair_busy(f, a);
	fair_busy(f, b);
	fair_expire(f, 1000000);
	ck_assert_uint_eq(nkilled, 0);
	/* A stream that ends comes back as an idle keep-alive connection. */
	fair_idle(f, w, 2000000);
	fair_counts(f, &n);
	ck_assert_uint_eq(n.regular, 3);
	ck_assert_uint_eq(n.watch, 0);
	ck_assert_uint_eq(n.idle, 1);
	fair_close(f, w);
	fair_close(f, a);
	fair_close(f, b);
	fair_close(f, NULL);
	fair_free(f);
	fair_free(NULL);
}
END_TEST

START_TEST(local_addresses)
{
	struct sockaddr_un un = { .sun_family = AF_UNIX };
	struct sockaddr_in a4;
	struct sockaddr_in6 a6 = { .sin6_family = AF_INET6 };
	static const char *const local6[] = { "::1", "::ffff:127.0.0.1", "::ffff:127.9.9.9", NULL };
	static const char *const remote6[] = { "::", "::ffff:10.0.0.1", "fe80::1", "2001:db8::1", NULL };

	ck_assert(fair_is_local((struct sockaddr *)&un, sizeof(sa_family_t)));
	a4 = v4("127.0.0.1", 1);
	ck_assert(fair_is_local((struct sockaddr *)&a4, sizeof(a4)));
	a4 = v4("127.200.3.4", 1);
	ck_assert(fair_is_local((struct sockaddr *)&a4, sizeof(a4)));
	a4 = v4("10.0.0.1", 1);
	ck_assert(!fair_is_local((struct sockaddr *)&a4, sizeof(a4)));
	a4 = v4("128.0.0.1", 1);
	ck_assert(!fair_is_local((struct sockaddr *)&a4, sizeof(a4)));
	/* A truncated address is not trusted. */
	a4 = v4("127.0.0.1", 1);
	ck_assert(!fair_is_local((struct sockaddr *)&a4, 4));
	ck_assert(!fair_is_local(NULL, 0));
	for (const char *const *s = local6; *s; s++) {
		ck_assert_int_eq(inet_pton(AF_INET6, *s, &a6.sin6_addr), 1);
		ck_assert_msg(fair_is_local((struct sockaddr *)&a6, sizeof(a6)), "%s", *s);
	}
	for (const char *const *s = remote6; *s; s++) {
		ck_assert_int_eq(inet_pton(AF_INET6, *s, &a6.sin6_addr), 1);
		ck_assert_msg(!fair_is_local((struct sockaddr *)&a6, sizeof(a6)), "%s", *s);
	}
}
END_TEST

static Suite *fair_suite(void)
{
	Suite *s = suite_create("fair");
	TCase *tc = tcase_create("core");

	tcase_add_test(tc, head_deadline);
	tcase_add_test(tc, reclaim_oldest_waiting);
	tcase_add_test(tc, reclaim_skips_unread_requests);
	tcase_add_test(tc, refuse_when_all_busy);
	tcase_add_test(tc, per_address_limit);
	tcase_add_test(tc, watch_streams_apart);
	tcase_add_test(tc, local_addresses);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(fair_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
