/* SPDX-License-Identifier: MIT */
/* clock.c: wall and monotonic clocks, the injectable clock's real source, RFC 3339 formatting of epoch ms. */
#include "common/clock.h"

#include <string.h>
#include <time.h>

static int64_t read_ns(clockid_t id)
{
	struct timespec ts;

	if (clock_gettime(id, &ts) != 0)
		return 0;
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int64_t clock_wall_ms(void)
{
	return read_ns(CLOCK_REALTIME) / 1000000;
}

int64_t clock_wall_ns(void)
{
	return read_ns(CLOCK_REALTIME);
}

int64_t clock_mono_ms(void)
{
	return read_ns(CLOCK_MONOTONIC) / 1000000;
}

int64_t clock_mono_ns(void)
{
	return read_ns(CLOCK_MONOTONIC);
}

static int64_t system_mono_ms(void *ctx)
{
	(void)ctx;
	return clock_mono_ms();
}

static int64_t system_wall_ns(void *ctx)
{
	(void)ctx;
	return clock_wall_ns();
}

const struct clock_src clock_system = { .mono_ms = system_mono_ms, .wall_ns = system_wall_ns };

/* Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm): no
 * gmtime_r, no locale, valid for any int64 day count we can be given. */
static void civil_from_days(int64_t z, int64_t *y, unsigned *m, unsigned *d)
{
	z += 719468;
	int64_t era = (z >= 0 ? z : z - 146096) / 146097;
	unsigned doe = (unsigned)(z - era * 146097);
	unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
	unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
	unsigned mp = (5 * doy + 2) / 153;

	*d = doy - (153 * mp + 2) / 5 + 1;
	*m = mp < 10 ? mp + 3 : mp - 9;
	*y = (int64_t)yoe + era * 400 + (*m <= 2);
}

static char *put_num(char *p, unsigned v, int width)
{
	for (int i = width - 1; i >= 0; i--) {
		p[i] = (char)('0' + v % 10);
		v /= 10;
	}
	return p + width;
}

/* RFC 3339 has four-digit years: times outside 0000..9999 are clamped. */
#define RFC3339_MIN_MS (-62167219200000LL)  /* 0000-01-01T00:00:00.000Z */
#define RFC3339_MAX_MS (253402300799999LL)  /* 9999-12-31T23:59:59.999Z */

static const char digits2[201] =
	"00010203040506070809101112131415161718192021222324252627282930313233343536373839"
	"40414243444546474849505152535455565758596061626364656667686970717273747576777879"
	"8081828384858687888990919293949596979899";

static inline char *put2(char *p, unsigned v)
{
	memcpy(p, digits2 + 2 * v, 2);
	return p + 2;
}

/*
** The last second formatted on this thread: a listing renders three or
** four times a record, nearly all within the same second or two, so the
** "YYYY-MM-DDTHH:MM:SS" part is made about once a second; only the
** milliseconds are written each time.
*/
static _Thread_local struct {
	int64_t sec;            /* INT64_MIN: none yet (no second is that far back) */
	char text[19];          /* "YYYY-MM-DDTHH:MM:SS" */
} sec_cache = { .sec = INT64_MIN };

size_t clock_put_rfc3339(int64_t ms, char *p)
{
	int64_t sec;
	unsigned r;

	if (ms < RFC3339_MIN_MS)
		ms = RFC3339_MIN_MS;
	if (ms > RFC3339_MAX_MS)
		ms = RFC3339_MAX_MS;
	sec = ms / 1000;
	r = (unsigned)(ms % 1000);
	if (ms % 1000 < 0) {
		sec--;
		r = (unsigned)(ms % 1000 + 1000);
	}
	if (sec_cache.sec != sec) {
		int64_t days = sec / 86400, rem = sec % 86400, y;
		unsigned mon, day, t;
		char *d = sec_cache.text;

		if (rem < 0) {
			rem += 86400;
			days--;
		}
		civil_from_days(days, &y, &mon, &day);
		d = put_num(d, (unsigned)y, 4);
		*d++ = '-';
		d = put2(d, mon);
		*d++ = '-';
		d = put2(d, day);
		*d++ = 'T';
		t = (unsigned)rem;
		d = put2(d, t / 3600);
		*d++ = ':';
		d = put2(d, t / 60 % 60);
		*d++ = ':';
		put2(d, t % 60);
		sec_cache.sec = sec;
	}
	memcpy(p, sec_cache.text, 19);
	p[19] = '.';
	p[20] = (char)('0' + r / 100);
	put2(p + 21, r % 100);
	p[23] = 'Z';
	return 24;
}

char *clock_format_rfc3339(int64_t ms, char buf[32])
{
	buf[clock_put_rfc3339(ms, buf)] = '\0';
	return buf;
}

void clock_deadline(clockid_t id, int64_t ms, struct timespec *ret)
{
	if (ms < 0)
		ms = 0;
	clock_gettime(id, ret);
	ret->tv_sec += (time_t)(ms / 1000);
	ret->tv_nsec += (long)(ms % 1000) * 1000000L;
	if (ret->tv_nsec >= 1000000000L) {
		ret->tv_sec++;
		ret->tv_nsec -= 1000000000L;
	}
}
