/* SPDX-License-Identifier: MIT */
/* status.c: looks up the status page's embedded files by path. */
#include "api/status/status.h"

#include <errno.h>
#include <string.h>

int api_status_asset(const char *path, const void **ret_body, size_t *ret_len,
		     const char **ret_type)
{
	if (!path)
		return -EINVAL;
	for (size_t i = 0; i < api_status_nfiles; i++) {
		const struct api_status_file *f = &api_status_files[i];

		if (strcmp(f->path, path) != 0)
			continue;
		*ret_body = f->body;
		*ret_len = f->len;
		*ret_type = f->type;
		return 0;
	}
	return -ENOENT;
}
