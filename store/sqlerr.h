/* SPDX-License-Identifier: MIT */
/* sqlerr.h: SQLite result codes to our errors, once, at the border (store/ only). */
#ifndef SM_SQLERR_H
#define SM_SQLERR_H

#include <stddef.h>
#include <sqlite3.h>

/* -EBADMSG (a damaged file), -ENOSPC (disk full), -EBUSY (locked), -ENOMEM, else -EIO. */
int store_sql_errno(int rc);
/* Put "what: SQLite's message" in err (may be NULL) and return store_sql_errno(rc). */
int store_sql_fail(sqlite3 *db, int rc, const char *what, char *err, size_t errlen);

#endif
