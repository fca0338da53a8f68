/* SPDX-License-Identifier: MIT */
/* sqlerr.c: SQLite result codes to our errors. */
#include <errno.h>
#include <stdio.h>

#include "store/sqlerr.h"

int store_sql_errno(int rc)
{
	switch (rc & 0xff) {
	case SQLITE_CORRUPT:
	case SQLITE_NOTADB:
		return -EBADMSG; /* a damaged file (store_open says which kind) */
	case SQLITE_FULL:
		return -ENOSPC;
	case SQLITE_BUSY:
	case SQLITE_LOCKED:
		return -EBUSY;
	case SQLITE_NOMEM:
		return -ENOMEM;
	default:
		return -EIO;
	}
}

int store_sql_fail(sqlite3 *db, int rc, const char *what, char *err, size_t errlen)
{
	if (err && errlen)
		snprintf(err, errlen, "%s: %s", what, db ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
	return store_sql_errno(rc);
}
