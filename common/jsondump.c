/* SPDX-License-Identifier: MIT */
/* jsondump.c: see jsondump.h. */
#include "common/jsondump.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

int json_real_digits(double d)
{
	char s[40];

	if (!isfinite(d))
		return 17; /* jansson refuses these anyway */
	for (int p = 15; p < 17; p++) {
		snprintf(s, sizeof(s), "%.*g", p, d);
		if (strtod(s, NULL) == d)
			return p;
	}
	return 17;
}

/* The most digits any real under j needs; nesting is bounded by what
 * jansson parsed (its own depth limit) or what our code built. */
static int digits_needed(const json_t *j)
{
	const char *k;
	json_t *v;
	size_t i;
	int most = 15, d;

	switch (json_typeof(j)) {
	case JSON_REAL:
		return json_real_digits(json_real_value(j));
	case JSON_OBJECT:
		json_object_foreach((json_t *)j, k, v)
			if ((d = digits_needed(v)) > most && (most = d) == 17)
				break;
		return most;
	case JSON_ARRAY:
		json_array_foreach(j, i, v)
			if ((d = digits_needed(v)) > most && (most = d) == 17)
				break;
		return most;
	default:
		return most;
	}
}

char *json_dumps_exact(const json_t *j, size_t flags)
{
	if (!j)
		return NULL;
	return json_dumps(j, flags | JSON_REAL_PRECISION(digits_needed(j)));
}
