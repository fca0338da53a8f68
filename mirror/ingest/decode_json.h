/* SPDX-License-Identifier: MIT */
/* decode_json.h: the JSON decoder: the topic is the key, the payload its value, a timestamp member its time. */
#ifndef SM_DECODE_JSON_H
#define SM_DECODE_JSON_H

#include "common/conf.h"
#include "mirror/ingest/decode.h"

/*
** Create the JSON decoder from c (copied: format, timestamp_field). It
** claims every topic, so the session puts it last. Each message becomes
** one update, its payload as received:
**   - the observation time is the first top-level member named
**     timestamp_field, "timestamp" or "time" (in that order) that is not
**     null, as jscan_payload decodes it, or else the receive time;
**   - such a member that cannot be decoded refuses the message (bad_ts);
**   - with format = json a payload that is not one JSON text is refused
**     (not_json); an empty payload (a delete) is never refused.
** Returns 0 or -ENOMEM; *ret is the caller's (decoder_free) until handed
** to the session.
*/
int decode_json_new(const struct conf *c, struct decoder **ret);

#endif
