/* SPDX-License-Identifier: MIT */
/* fileid.h: does a path still name the database file we opened? */
#ifndef SM_FILEID_H
#define SM_FILEID_H

#include <errno.h>
#include <stdio.h>
#include <sys/stat.h>

/*
** An operator who deletes the database, or moves another file (a backup)
** over it, leaves SQLite writing to a file nobody will read again. Every
** connection that writes (the store's, the intents outbox's) takes the
** file's identity at open and checks it before each write, one stat():
** a write to a file no longer there is refused (and kept, by the caller,
** for when it is back), not silently lost.
*/
struct file_id {
	dev_t dev;
	ino_t ino;  /* 0: unknown (the stat at open failed): never refuses */
};

static inline void file_id_take(const char *path, struct file_id *id)
{
	struct stat sb;

	id->dev = 0;
	id->ino = 0;
	if (stat(path, &sb) == 0) {
		id->dev = sb.st_dev;
		id->ino = sb.st_ino;
	}
}

/* 0, or -ESTALE with the reason in err. */
static inline int file_id_check(const char *path, const struct file_id *id, char *err,
				size_t errlen)
{
	struct stat sb;
	int gone;

	if (!id->ino)
		return 0;
	gone = stat(path, &sb) < 0;
	if (!gone && sb.st_dev == id->dev && sb.st_ino == id->ino)
		return 0;
	if (err && errlen)
		snprintf(err, errlen, "%s was %s while open, so writes would be lost; put it back "
			 "or restart statemirrord", path, gone && errno == ENOENT ? "removed" : "replaced");
	return -ESTALE;
}

#endif
