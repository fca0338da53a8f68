/* SPDX-License-Identifier: MIT */
/* clock_fake.c: nothing yet; modules take now_ms explicitly. Kept so every
 * unit test links the same way. */
#include "clock_fake.h"

int64_t fake_now_ms = 1795313402123;
