/* SPDX-License-Identifier: MIT */
/* jsondump.h: jansson's json_dumps, with numbers written as people wrote them. */
#ifndef SM_JSONDUMP_H
#define SM_JSONDUMP_H

#include <jansson.h>

/*
** json_dumps writes every real with 17 significant digits unless told
** otherwise, so 21.9 comes out as 21.899999999999999: the same double,
** but not the number a user asked an intent to set, nor the one a
** producer published. json_dumps_exact writes them with the fewest
** digits (15, 16 or 17) at which every real in j reads back as the same
** double, so 21.9 stays 21.9 and 0.1 + 0.2 stays 0.30000000000000004.
** flags as for json_dumps, without a JSON_REAL_PRECISION of their own.
** Returns a malloc'd string or NULL (out of memory, or what json_dumps
** refuses).
*/
char *json_dumps_exact(const json_t *j, size_t flags);

/* The fewest significant digits (15..17) at which d reads back as d. */
int json_real_digits(double d);

#endif
