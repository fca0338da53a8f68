/* SPDX-License-Identifier: MIT */
/* clock_fake.h: the injected time unit tests pass as now_ms, and a clock source that moves only when told. */
#ifndef SM_CLOCK_FAKE_H
#define SM_CLOCK_FAKE_H
#include <stdint.h>

#include "common/clock.h"

extern int64_t fake_now_ms; /* starts at 2026-11-22T02:10:02.123Z */

/* For threads that read time themselves (mqtt_set_clock): monotonic and
 * wall time both stand still until fake_clock_advance moves them, from any
 * thread. Wall time starts at fake_now_ms. */
extern const struct clock_src fake_clock;
void fake_clock_advance(int64_t ms);
int64_t fake_clock_mono_ms(void);
#endif
