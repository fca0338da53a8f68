/* SPDX-License-Identifier: MIT */
/* clock_fake.h: the injected time unit tests pass as now_ms. */
#ifndef SM_CLOCK_FAKE_H
#define SM_CLOCK_FAKE_H
#include <stdint.h>
extern int64_t fake_now_ms; /* starts at 2026-11-22T02:10:02.123Z */
#endif
