/* SPDX-License-Identifier: MIT */
/* status.h: the status page's files (HTML, CSS, JavaScript), compiled into the binary. */
#ifndef SM_API_STATUS_H
#define SM_API_STATUS_H

#include <stddef.h>

/* The Content-Security-Policy every asset is served with: nothing but this
 * origin, no inline script or style, no frames, no forms posting elsewhere. */
#define API_STATUS_CSP                                                                     \
	"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "  \
	"connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; "     \
	"frame-ancestors 'none'"

/*
** The asset served at path ("/", "/status.js", "/status.css"; no query).
** On 0, *ret_body (ret_len bytes) and *ret_type (its Content-Type) are
** static: never freed, never changed, safe from any thread. Returns
** -ENOENT for a path that is not an asset, -EINVAL for a NULL path.
*/
int api_status_asset(const char *path, const void **ret_body, size_t *ret_len,
		     const char **ret_type);

/* The table embed.py generates (status_assets.c); for status.c only. */
struct api_status_file {
	const char *path;
	const char *type;
	const unsigned char *body;
	size_t len;
};
extern const struct api_status_file api_status_files[];
extern const size_t api_status_nfiles;

#endif
