/* SPDX-License-Identifier: MIT */
/* alerts.c: staleness alerts: pending set, incidents by topic prefix, the mirror alert, MQTT and exec. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/clock.h"
#include "common/log.h"
#include "common/stats.h"
#include "mirror/liveness/alerts.h"

extern char **environ;

#define NEVER INT64_MAX
#define GROUP_INTERVAL_FACTOR 5  /* updates to an open incident: at most one per 5 group waits */
#define MIRROR_WAIT_FACTOR 15    /* the mirror alert waits 15 group waits (30 s by default) */
#define EXAMPLES_KEPT 8          /* example records remembered per incident */
#define EXEC_MAX_ARGS 32

struct pend {
	struct rec *r;
	int64_t t; /* time of the key's latest change */
};

/* An open alert for a topic prefix. Its keys are the AS_ALERTED records
 * whose deepest open incident it is; only their number is kept. */
struct incident {
	struct incident *next;  /* hash chain */
	uint64_t hash;
	uint32_t count;         /* keys alerted in it */
	uint32_t added, recovered; /* since the last publication */
	struct rec *ex[EXAMPLES_KEPT];
	unsigned nex;
	int64_t since_ms, last_pub_ms;
	bool published;         /* its state is out (or adopted from a retained copy) */
	bool listed;            /* in the work list */
	bool adopted;           /* from an earlier run: resolve if still empty after settling */
	bool mqtt_only;         /* republish under a new topic without running exec */
	size_t len;
	char prefix[];
};

enum mirror_state { MIRROR_OK, MIRROR_WAITING, MIRROR_OPEN, MIRROR_RESOLVING, MIRROR_STATE_MAX };

struct child {
	pid_t pid;
	bool killed;
	int64_t deadline_ms;
	char *key;
};

/* An exec run waiting for a slot. key names the alert ("group dc1/hall2",
 * "mirror"): a newer alert with the same key replaces a queued one. */
struct job {
	char *key, *topic, *json, *state, *group;
	size_t len;
};

struct alerts {
	int64_t group_wait_ms, min_hold_ms, exec_timeout_ms;
	char *topic;         /* NULL = no MQTT alerts */
	size_t topic_len;
	char *exec_line;     /* NULL = no exec */
	char **argv;
	struct stale_outlet out;

	struct pend *pend;
	size_t npend, cappend;
	uint32_t *ptab;      /* open addressing: pend index + 1, 0 = empty */
	size_t pcap;
	int64_t window_due;

	struct incident **itab;
	size_t icap, nincidents;
	struct incident **work; /* incidents with something to publish or to settle */
	size_t nwork, capwork;

	bool link_known, synced;
	int64_t unsynced_since_ms, synced_since_ms;
	enum mirror_state mirror;
	int64_t mirror_due_ms;

	struct child kids[ALERTS_EXEC_MAX_CHILDREN];
	size_t nkids;
	struct job queue[ALERTS_EXEC_QUEUE];
	size_t qhead, qlen;

	struct log_ratelimit rl;
};

/* ------------------------------------------------------------ helpers */

static uint64_t hash_bytes(const char *p, size_t n)
{
	uint64_t h = 1469598103934665603ull;

	for (size_t i = 0; i < n; i++) {
		h ^= (unsigned char)p[i];
		h *= 1099511628211ull;
	}
	return h;
}

static int64_t group_interval(const struct alerts *a)
{
	return a->group_wait_ms * GROUP_INTERVAL_FACTOR;
}

static int64_t mirror_wait(const struct alerts *a)
{
	int64_t w = a->group_wait_ms * MIRROR_WAIT_FACTOR;

	return w > a->min_hold_ms ? w : a->min_hold_ms;
}

/* Does incident prefix p (len) contain topic t? "" holds the one-level topics. */
static bool prefix_contains(const char *p, size_t len, const char *t, size_t tlen)
{
	if (len == 0)
		return !memchr(t, '/', tlen);
	return tlen > len && t[len] == '/' && memcmp(p, t, len) == 0;
}

bool alerts_own_topic(const struct alerts *a, const char *topic, size_t len)
{
	if (!a->topic)
		return false;
	return len >= a->topic_len && memcmp(topic, a->topic, a->topic_len) == 0 &&
	       (len == a->topic_len || topic[a->topic_len] == '/');
}

/* "<topic>/group/<prefix>" ("<topic>/group" for the one-level topics). */
static char *group_topic(const struct alerts *a, const char *prefix, size_t len)
{
	size_t n = a->topic_len + 7 + len + 2;
	char *t = malloc(n);

	if (!t)
		return NULL;
	if (len)
		snprintf(t, n, "%s/group/%.*s", a->topic, (int)len, prefix);
	else
		snprintf(t, n, "%s/group", a->topic);
	return t;
}

/* ---------------------------------------------------------- settings */

static void free_argv(char **argv)
{
	if (!argv)
		return;
	for (char **p = argv; *p; p++)
		free(*p);
	free(argv);
}

/* Split the exec line into words (no quoting, no shell: anything more is
 * for a script). Returns NULL on ENOMEM or when there are no words. */
static char **split_exec(const char *line)
{
	char **argv = calloc(EXEC_MAX_ARGS + 1, sizeof(*argv));
	size_t n = 0;
	const char *p = line;

	if (!argv)
		return NULL;
	while (*p && n < EXEC_MAX_ARGS) {
		size_t k;

		while (*p == ' ' || *p == '\t')
			p++;
		k = strcspn(p, " \t");
		if (!k)
			break;
		argv[n] = strndup(p, k);
		if (!argv[n]) {
			free_argv(argv);
			return NULL;
		}
		n++;
		p += k;
	}
	if (!n) {
		free(argv);
		return NULL;
	}
	return argv;
}

struct settings {
	char *topic, *exec_line;
	char **argv;
};

static int read_settings(const struct conf *c, struct settings *ret)
{
	struct settings st = { 0 };

	if (c->alert_topic && c->alert_topic[0]) {
		size_t n = strlen(c->alert_topic);
		while (n > 1 && c->alert_topic[n - 1] == '/')
			n--; /* "a/b/" means "a/b" */
		if (!(st.topic = strndup(c->alert_topic, n)))
			goto fail;
	}
	if (c->alert_exec && c->alert_exec[strspn(c->alert_exec, " \t")]) {
		if (!(st.exec_line = strdup(c->alert_exec)) || !(st.argv = split_exec(c->alert_exec)))
			goto fail;
	}
	*ret = st;
	return 0;
fail:
	free(st.topic);
	free(st.exec_line);
	free_argv(st.argv);
	return -ENOMEM;
}

static void take_settings(struct alerts *a, const struct conf *c, struct settings *st)
{
	free(a->topic);
	free(a->exec_line);
	free_argv(a->argv);
	a->topic = st->topic;
	a->topic_len = st->topic ? strlen(st->topic) : 0;
	a->exec_line = st->exec_line;
	a->argv = st->argv;
	a->group_wait_ms = c->group_wait_ms > 0 ? c->group_wait_ms : 0;
	a->min_hold_ms = c->min_hold_ms > 0 ? c->min_hold_ms : 0;
	a->exec_timeout_ms = c->alert_exec_timeout_ms > 0 ? c->alert_exec_timeout_ms : 10000;
}

/* ------------------------------------------------------------- exec */

static void job_free(struct job *j)
{
	free(j->key);
	free(j->topic);
	free(j->json);
	free(j->state);
	free(j->group);
	*j = (struct job){ 0 };
}

static void exec_failed(struct alerts *a, int64_t now_ms, const char *key, const char *why)
{
	uint32_t dropped = 0;

	STAT_INC(alert_exec_failures);
	if (log_ratelimit_ok(&a->rl, now_ms, &dropped)) {
		if (dropped)
			log_warnx("alerts: %" PRIu32 " more exec failures not logged", dropped);
		log_warnx("alerts: exec %s for the %s alert: %s", a->exec_line ? a->exec_line : "-", key, why);
	}
}

static char *env_pair(const char *name, const char *value)
{
	size_t n = strlen(name) + strlen(value) + 2;
	char *s = malloc(n);

	if (s)
		snprintf(s, n, "%s=%s", name, value);
	return s;
}

/* Start one exec run: the alert JSON is written into the pipe before the
 * program starts (it fits the pipe buffer), so the keeper thread (which
 * holds the index write lock here) never blocks on it and a program that
 * does not read cannot SIGPIPE us. */
static void exec_start(struct alerts *a, struct job *j, int64_t now_ms)
{
	posix_spawn_file_actions_t fa;
	posix_spawnattr_t attr;
	sigset_t none, deflt;
	char *extra[3] = { 0 };
	char **envp = NULL;
	size_t nenv = 0;
	int fds[2] = { -1, -1 };
	pid_t pid;
	int rc;
	ssize_t w;

	if (!a->argv)
		return;
	/* Non-blocking: should the pipe be smaller than the alert (a user
	 * over its pipe-buffer quota gets 4 KiB pipes), the write comes up
	 * short and the run is refused, rather than the keeper thread hanging
	 * with the index write lock held, and ingest with it. */
	if (pipe2(fds, O_CLOEXEC | O_NONBLOCK) < 0) {
		exec_failed(a, now_ms, j->key, "cannot make a pipe, not run");
		return;
	}
	w = write(fds[1], j->json, j->len);
	close(fds[1]);
	(void)fcntl(fds[0], F_SETFL, 0);   /* the program's stdin blocks as usual */
	if (w < 0 || (size_t)w != j->len) {
		close(fds[0]);
		exec_failed(a, now_ms, j->key, "cannot write the alert to its stdin, not run");
		return;
	}

	while (environ && environ[nenv])
		nenv++;
	envp = calloc(nenv + 4, sizeof(*envp));
	extra[0] = env_pair("STATEMIRROR_ALERT_STATE", j->state);
	extra[1] = env_pair("STATEMIRROR_ALERT_GROUP", j->group ? j->group : "");
	extra[2] = env_pair("STATEMIRROR_ALERT_TOPIC", j->topic ? j->topic : "");
	if (!envp || !extra[0] || !extra[1] || !extra[2]) {
		close(fds[0]);
		exec_failed(a, now_ms, j->key, "out of memory, not run");
		goto out;
	}
	/* Ours last, and the daemon's own STATEMIRROR_ALERT_* left out: a
	 * program reading its environment must see this alert's values. */
	{
		size_t k = 0;
		for (size_t i = 0; i < nenv; i++)
			if (strncmp(environ[i], "STATEMIRROR_ALERT_", 18) != 0)
				envp[k++] = environ[i];
		memcpy(envp + k, extra, sizeof(extra));
	}

	sigemptyset(&none);
	sigemptyset(&deflt);
	for (int sig = 1; sig < 32; sig++)
		if (sig != SIGKILL && sig != SIGSTOP)
			sigaddset(&deflt, sig);
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_adddup2(&fa, fds[0], STDIN_FILENO);
	posix_spawn_file_actions_addclosefrom_np(&fa, STDERR_FILENO + 1);
	posix_spawnattr_init(&attr);
	posix_spawnattr_setsigmask(&attr, &none);
	posix_spawnattr_setsigdefault(&attr, &deflt);
	posix_spawnattr_setpgroup(&attr, 0); /* its own group: a timeout kills it all */
	posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF |
					POSIX_SPAWN_SETPGROUP);
	rc = posix_spawnp(&pid, a->argv[0], &fa, &attr, a->argv, envp);
	posix_spawnattr_destroy(&attr);
	posix_spawn_file_actions_destroy(&fa);
	close(fds[0]);
	if (rc != 0) {
		char why[128];
		snprintf(why, sizeof(why), "cannot start: %s", strerror(rc));
		exec_failed(a, now_ms, j->key, why);
		goto out;
	}
	a->kids[a->nkids++] = (struct child){
		.pid = pid, .deadline_ms = now_ms + a->exec_timeout_ms, .key = j->key,
	};
	j->key = NULL; /* the child record owns it now */
	log_debug("alerts: started %s (pid %d) for the %s alert", a->argv[0], (int)pid,
		  a->kids[a->nkids - 1].key);
out:
	for (int i = 0; i < 3; i++)
		free(extra[i]);
	free(envp);
}

static void exec_pump(struct alerts *a, int64_t now_ms)
{
	while (a->qlen && a->nkids < ALERTS_EXEC_MAX_CHILDREN) {
		struct job *j = &a->queue[a->qhead];

		exec_start(a, j, now_ms);
		job_free(j);
		a->qhead = (a->qhead + 1) % ALERTS_EXEC_QUEUE;
		a->qlen--;
	}
}

/* Queue an exec run. The queue holds current states: a newer alert for
 * the same key replaces a queued older one; when full, the oldest goes. */
static void exec_enqueue(struct alerts *a, const char *key, const char *topic, const char *json,
			 size_t len, const char *state, const char *group, int64_t now_ms)
{
	struct job j = { 0 };

	if (!a->argv)
		return;
	j.key = strdup(key);
	j.topic = topic ? strdup(topic) : NULL;
	j.json = malloc(len + 1);
	j.state = strdup(state);
	j.group = group ? strdup(group) : NULL;
	if (!j.key || (topic && !j.topic) || !j.json || !j.state || (group && !j.group)) {
		job_free(&j);
		exec_failed(a, now_ms, key, "out of memory, not run");
		return;
	}
	memcpy(j.json, json, len);
	j.json[len] = '\n';
	j.len = len + 1;
	for (size_t i = 0; i < a->qlen; i++) {
		struct job *q = &a->queue[(a->qhead + i) % ALERTS_EXEC_QUEUE];
		if (strcmp(q->key, key) == 0) {
			job_free(q);
			*q = j;
			return;
		}
	}
	if (a->qlen == ALERTS_EXEC_QUEUE) {
		struct job *old = &a->queue[a->qhead];
		exec_failed(a, now_ms, old->key, "too many alerts waiting for exec, dropped");
		job_free(old);
		a->qhead = (a->qhead + 1) % ALERTS_EXEC_QUEUE;
		a->qlen--;
	}
	a->queue[(a->qhead + a->qlen) % ALERTS_EXEC_QUEUE] = j;
	a->qlen++;
	exec_pump(a, now_ms);
}

/* Reap finished children without blocking; kill the ones past their time. */
static int64_t exec_reap(struct alerts *a, int64_t now_ms)
{
	int64_t next = NEVER;
	size_t i = 0;

	while (i < a->nkids) {
		struct child *k = &a->kids[i];
		int st = 0;
		pid_t rc = waitpid(k->pid, &st, WNOHANG);

		if (rc == 0) {
			if (!k->killed && now_ms >= k->deadline_ms) {
				char why[64];
				if (kill(-k->pid, SIGKILL) < 0)
					kill(k->pid, SIGKILL);
				k->killed = true;
				snprintf(why, sizeof(why), "timed out after %" PRId64 " ms, killed",
					 a->exec_timeout_ms);
				exec_failed(a, now_ms, k->key, why);
			}
			if (!k->killed && k->deadline_ms - now_ms < next)
				next = k->deadline_ms - now_ms;
			if (ALERTS_REAP_MS < next)
				next = ALERTS_REAP_MS; /* poll again, without spinning */
			i++;
			continue;
		}
		if (rc == k->pid && !k->killed) {
			char why[64];
			if (WIFEXITED(st) && WEXITSTATUS(st) == 0) {
				log_debug("alerts: exec for the %s alert done", k->key);
			} else {
				if (WIFEXITED(st))
					snprintf(why, sizeof(why), "exit status %d", WEXITSTATUS(st));
				else
					snprintf(why, sizeof(why), "killed by signal %d",
						 WIFSIGNALED(st) ? WTERMSIG(st) : 0);
				exec_failed(a, now_ms, k->key, why);
			}
		} else if (rc < 0 && errno != ECHILD) {
			i++; /* EINTR: next time */
			continue;
		}
		free(k->key);
		a->kids[i] = a->kids[--a->nkids];
	}
	exec_pump(a, now_ms);
	return next;
}

/* ---------------------------------------------------------- delivery */

static void put_time(json_t *o, const char *name, int64_t ms)
{
	char buf[32];

	json_object_set_new(o, name, ms > 0 ? json_string(clock_format_rfc3339(ms, buf)) : json_null());
}

/*
** Send one alert: log it, count it, publish it (retained, when topic) and
** hand it to exec. clear: publish an empty retained payload afterwards, so
** that the broker no longer holds an alert that is over (subscribers still
** see the resolution first). mqtt_only: a republication (the alerts topic
** moved), not a new alert.
*/
static void emit(struct alerts *a, const char *key, const char *topic, json_t *o, const char *state,
		 const char *group, bool clear, bool mqtt_only, int64_t now_ms)
{
	json_t *summary = json_object_get(o, "summary");
	char *text = json_dumps(o, JSON_COMPACT);
	size_t len;

	if (!text) {
		log_warnx("alerts: out of memory, the %s alert not sent", key);
		return;
	}
	len = strlen(text);
	if (!mqtt_only) {
		log_warnx("alert: %s", json_string_value(summary) ? json_string_value(summary) : text);
		STAT_INC(alerts_sent);
	}
	if (topic && a->out.publish) {
		a->out.publish(a->out.ctx, topic, text, len);
		if (clear)
			a->out.publish(a->out.ctx, topic, "", 0);
	}
	if (!mqtt_only)
		exec_enqueue(a, key, topic, text, len, state, group, now_ms);
	free(text);
}

static bool example_valid(const struct incident *inc, const struct rec *r)
{
	return (r->alert_state & AS_ALERTED) && (r->flags & REC_STALE) && !(r->flags & REC_DELETED) &&
	       prefix_contains(inc->prefix, inc->len, r->data, r->topic_len);
}

static json_t *incident_json(const struct incident *inc, int64_t now_ms, size_t nex)
{
	json_t *o = json_object(), *ex = json_array();
	const char *first = NULL;
	const char *where = inc->len ? inc->prefix : "(top level)";
	char summary[512];
	char since[32];

	if (!o || !ex) {
		json_decref(o);
		json_decref(ex);
		return NULL;
	}
	for (unsigned i = 0; i < inc->nex && json_array_size(ex) < nex; i++) {
		json_array_append_new(ex, json_stringn(inc->ex[i]->data, inc->ex[i]->topic_len));
		if (!first)
			first = inc->ex[i]->data;
	}
	clock_format_rfc3339(inc->since_ms, since);
	if (inc->count)
		snprintf(summary, sizeof(summary), "%" PRIu32 " key%s stale under %.200s%s%.200s",
			 inc->count, inc->count == 1 ? "" : "s", where, first ? ", e.g. " : "",
			 first ? first : "");
	else
		snprintf(summary, sizeof(summary), "keys under %.200s fresh again (stale since %s)",
			 where, since);
	json_object_set_new(o, "alert", json_string("stale"));
	json_object_set_new(o, "group", json_stringn(inc->prefix, inc->len));
	json_object_set_new(o, "state", json_string(inc->count ? "stale" : "resolved"));
	json_object_set_new(o, "count", json_integer(inc->count));
	json_object_set_new(o, "new", json_integer(inc->added));
	json_object_set_new(o, "recovered", json_integer(inc->recovered));
	json_object_set_new(o, "examples", ex);
	put_time(o, "since", inc->since_ms);
	put_time(o, "time", now_ms);
	json_object_set_new(o, "summary", json_string(summary));
	return o;
}

static void incident_remove(struct alerts *a, struct incident *inc)
{
	struct incident **p = &a->itab[inc->hash & (a->icap - 1)];

	while (*p && *p != inc)
		p = &(*p)->next;
	if (*p)
		*p = inc->next;
	a->nincidents--;
	free(inc);
}

/* Publish inc's state. A resolved incident is cleared and freed (the
 * caller must not use it afterwards). */
static void incident_publish(struct alerts *a, struct incident *inc, int64_t now_ms)
{
	char *topic = a->topic ? group_topic(a, inc->prefix, inc->len) : NULL;
	char *key;
	json_t *o = NULL;
	unsigned k = 0;
	bool resolved = inc->count == 0;

	for (unsigned i = 0; i < inc->nex; i++)
		if (example_valid(inc, inc->ex[i]))
			inc->ex[k++] = inc->ex[i];
	inc->nex = k;
	for (size_t nex = ALERTS_EXAMPLES + 1; nex-- > 0;) {
		char *probe;
		size_t len;

		json_decref(o);
		o = incident_json(inc, now_ms, nex);
		if (!o || !(probe = json_dumps(o, JSON_COMPACT)))
			break;
		len = strlen(probe);
		free(probe);
		if (len < ALERTS_JSON_MAX)
			break;
	}
	key = malloc(inc->len + 7);
	if (key)
		snprintf(key, inc->len + 7, "group %s", inc->prefix);
	if (o && key && (topic || !a->topic))
		emit(a, key, topic, o, resolved ? "resolved" : "stale", inc->prefix,
		     resolved, inc->mqtt_only, now_ms);
	else
		log_warnx("alerts: out of memory, the alert for %s not sent", inc->prefix);
	json_decref(o);
	free(topic);
	free(key);
	inc->published = true;
	inc->mqtt_only = false;
	inc->last_pub_ms = now_ms;
	inc->added = inc->recovered = 0;
	if (resolved)
		incident_remove(a, inc);
}

static void mirror_publish(struct alerts *a, bool open, int64_t now_ms)
{
	json_t *o = json_object();
	char *topic = NULL;
	char since[32], summary[256];

	if (!o)
		return;
	clock_format_rfc3339(a->unsynced_since_ms, since);
	if (open)
		snprintf(summary, sizeof(summary),
			 "statemirror not synced with the broker since %s; key alerts held back", since);
	else
		snprintf(summary, sizeof(summary),
			 "statemirror synced with the broker again (out since %s)", since);
	json_object_set_new(o, "alert", json_string("mirror"));
	json_object_set_new(o, "state", json_string(open ? "disconnected" : "resolved"));
	put_time(o, "since", a->unsynced_since_ms);
	put_time(o, "time", now_ms);
	json_object_set_new(o, "summary", json_string(summary));
	if (a->topic) {
		size_t n = a->topic_len + 8;
		if ((topic = malloc(n)))
			snprintf(topic, n, "%s/mirror", a->topic);
	}
	if (topic || !a->topic)
		emit(a, "mirror", topic, o, open ? "disconnected" : "resolved", NULL, !open, false, now_ms);
	free(topic);
	json_decref(o);
}

/* ------------------------------------------------------- incidents */

static int itab_grow(struct alerts *a)
{
	size_t ncap = a->icap ? a->icap * 2 : 64;
	struct incident **nt = calloc(ncap, sizeof(*nt));

	if (!nt)
		return -ENOMEM;
	for (size_t i = 0; i < a->icap; i++) {
		struct incident *p = a->itab[i], *next;
		for (; p; p = next) {
			next = p->next;
			p->next = nt[p->hash & (ncap - 1)];
			nt[p->hash & (ncap - 1)] = p;
		}
	}
	free(a->itab);
	a->itab = nt;
	a->icap = ncap;
	return 0;
}

static struct incident *incident_get(const struct alerts *a, const char *p, size_t len)
{
	uint64_t h = hash_bytes(p, len);

	for (struct incident *i = a->itab[h & (a->icap - 1)]; i; i = i->next)
		if (i->hash == h && i->len == len && memcmp(i->prefix, p, len) == 0)
			return i;
	return NULL;
}

static struct incident *incident_new(struct alerts *a, const char *p, size_t len, int64_t now_ms)
{
	struct incident *inc;

	if (a->nincidents >= a->icap)
		itab_grow(a);
	inc = calloc(1, sizeof(*inc) + len + 1);
	if (!inc)
		return NULL;
	inc->hash = hash_bytes(p, len);
	inc->len = len;
	memcpy(inc->prefix, p, len);
	inc->since_ms = now_ms;
	inc->next = a->itab[inc->hash & (a->icap - 1)];
	a->itab[inc->hash & (a->icap - 1)] = inc;
	a->nincidents++;
	return inc;
}

/* The deepest open incident that contains topic t. */
static struct incident *incident_find(const struct alerts *a, const char *t, size_t len)
{
	const char *slash;
	size_t end = len;

	if (!memchr(t, '/', len))
		return incident_get(a, t, 0);
	while (end > 0 && (slash = memrchr(t, '/', end))) {
		struct incident *inc;
		end = (size_t)(slash - t);
		if ((inc = incident_get(a, t, end)))
			return inc;
	}
	return NULL;
}

static void work_add(struct alerts *a, struct incident *inc)
{
	if (inc->listed)
		return;
	if (a->nwork == a->capwork) {
		size_t ncap = a->capwork ? a->capwork * 2 : 32;
		struct incident **nw = realloc(a->work, ncap * sizeof(*nw));
		if (!nw)
			return; /* published with the next change that finds memory */
		a->work = nw;
		a->capwork = ncap;
	}
	a->work[a->nwork++] = inc;
	inc->listed = true;
}

static void incident_join(struct alerts *a, struct incident *inc, struct rec *r)
{
	inc->count++;
	inc->added++;
	inc->adopted = false;
	if (inc->nex < EXAMPLES_KEPT)
		inc->ex[inc->nex++] = r;
	work_add(a, inc);
}

static void incident_leave(struct alerts *a, struct incident *inc)
{
	if (inc->count)
		inc->count--;
	inc->recovered++;
	work_add(a, inc);
}

/*
** New alert groups from one flush. Each key starts in its group (its
** topic without the last level); while two or more groups share a parent
** (and the parent is not the top), they are merged into it; a group below
** another one folds into it. So a gateway whose 100 devices all stop
** yields one alert for the gateway, and two unrelated producers two.
*/
struct ng {
	const char *p;  /* borrowed from a record's topic */
	size_t len;
	uint32_t count;
	struct rec *ex[EXAMPLES_KEPT];
	unsigned nex;
	size_t into;    /* merged into this group's index; itself while active */
};

struct ngset {
	struct ng *v;
	size_t n, cap;
	size_t *slot;   /* open addressing over v: index + 1, 0 empty */
	size_t scap;
};

static size_t ngset_slot(const struct ngset *g, const char *p, size_t len, bool *found)
{
	size_t i = hash_bytes(p, len) & (g->scap - 1);

	for (; g->slot[i]; i = (i + 1) & (g->scap - 1)) {
		const struct ng *x = &g->v[g->slot[i] - 1];
		if (x->len == len && memcmp(x->p, p, len) == 0) {
			*found = true;
			return i;
		}
	}
	*found = false;
	return i;
}

/* The index of group (p, len), made if absent. Returns SIZE_MAX on ENOMEM. */
static size_t ngset_get(struct ngset *g, const char *p, size_t len, bool create)
{
	bool found;
	size_t s;

	/* Only a creating call grows the table: a plain lookup never fails
	 * for want of memory (rollup indexes with what it returns). */
	if (!create && g->scap == 0)
		return SIZE_MAX;
	if (create && 2 * (g->n + 1) > g->scap) {
		size_t ncap = g->scap ? 2 * g->scap : 256;
		size_t *ns = calloc(ncap, sizeof(*ns));
		if (!ns)
			return SIZE_MAX;
		free(g->slot);
		g->slot = ns;
		g->scap = ncap;
		for (size_t i = 0; i < g->n; i++) {
			s = ngset_slot(g, g->v[i].p, g->v[i].len, &found);
			g->slot[s] = i + 1;
		}
	}
	s = ngset_slot(g, p, len, &found);
	if (found)
		return g->slot[s] - 1;
	if (!create)
		return SIZE_MAX;
	if (g->n == g->cap) {
		size_t ncap = g->cap ? 2 * g->cap : 64;
		struct ng *nv = realloc(g->v, ncap * sizeof(*nv));
		if (!nv)
			return SIZE_MAX;
		g->v = nv;
		g->cap = ncap;
	}
	g->v[g->n] = (struct ng){ .p = p, .len = len, .into = g->n };
	g->slot[s] = g->n + 1;
	return g->n++;
}

static size_t ng_root(const struct ng *v, size_t i)
{
	while (v[i].into != i)
		i = v[i].into;
	return i;
}

static void ng_merge(struct ng *v, size_t from, size_t to)
{
	to = ng_root(v, to);
	if (from == to)
		return;
	v[to].count += v[from].count;
	for (unsigned k = 0; k < v[from].nex && v[to].nex < EXAMPLES_KEPT; k++)
		v[to].ex[v[to].nex++] = v[from].ex[k];
	v[from].count = 0;
	v[from].into = to;
}

/* The parent of a group prefix, never the empty top. */
static bool parent_of(const char *p, size_t len, size_t *ret_len)
{
	const char *slash = len ? memrchr(p, '/', len) : NULL;

	if (!slash || slash == p)
		return false;
	*ret_len = (size_t)(slash - p);
	return true;
}

static bool ng_active(const struct ng *x, size_t i)
{
	return x->into == i && x->count > 0;
}

static int rollup(struct ngset *g)
{
	bool changed = true;

	while (changed) {
		size_t nbefore = g->n, pl, pi;
		uint32_t *kids;

		changed = false;
		for (size_t i = 0; i < nbefore; i++)
			if (ng_active(&g->v[i], i) && parent_of(g->v[i].p, g->v[i].len, &pl) &&
			    ngset_get(g, g->v[i].p, pl, true) == SIZE_MAX)
				return -ENOMEM;
		if (!(kids = calloc(g->n, sizeof(*kids))))
			return -ENOMEM;
		for (size_t i = 0; i < nbefore; i++)
			if (ng_active(&g->v[i], i) && parent_of(g->v[i].p, g->v[i].len, &pl))
				kids[ngset_get(g, g->v[i].p, pl, false)]++;
		for (size_t i = 0; i < nbefore; i++) {
			if (!ng_active(&g->v[i], i) || !parent_of(g->v[i].p, g->v[i].len, &pl))
				continue;
			pi = ngset_get(g, g->v[i].p, pl, false);
			if (kids[pi] >= 2) {
				ng_merge(g->v, i, pi);
				changed = true;
			}
		}
		free(kids);
	}
	/* Fold each group into the topmost group above it. */
	for (size_t i = 0; i < g->n; i++) {
		size_t top = i, end = g->v[i].len, ai;

		if (!ng_active(&g->v[i], i))
			continue;
		while (parent_of(g->v[i].p, end, &end))
			if ((ai = ngset_get(g, g->v[i].p, end, false)) != SIZE_MAX &&
			    ng_active(&g->v[ai], ai))
				top = ai;
		if (top != i)
			ng_merge(g->v, i, top);
	}
	return 0;
}

static void open_new(struct alerts *a, struct rec **keys, size_t n, int64_t now_ms)
{
	struct ngset g = { 0 };

	if (!n)
		return;
	for (size_t i = 0; i < n; i++) {
		struct rec *r = keys[i];
		const char *slash = memrchr(r->data, '/', r->topic_len);
		size_t gi = ngset_get(&g, r->data, slash ? (size_t)(slash - r->data) : 0, true);

		if (gi == SIZE_MAX)
			goto fallback;
		g.v[gi].count++;
		if (g.v[gi].nex < EXAMPLES_KEPT)
			g.v[gi].ex[g.v[gi].nex++] = r;
	}
	if (rollup(&g) < 0)
		goto fallback;
	for (size_t i = 0; i < g.n; i++) {
		struct ng *x = &g.v[i];
		struct incident *inc;

		if (!ng_active(x, i))
			continue;
		inc = incident_get(a, x->p, x->len);
		if (!inc)
			inc = incident_new(a, x->p, x->len, now_ms);
		if (!inc) {
			log_warnx("alerts: out of memory, %" PRIu32 " stale keys under %.*s not alerted",
				  x->count, (int)x->len, x->p);
			continue;
		}
		inc->count += x->count;
		inc->added += x->count;
		inc->adopted = false;
		for (unsigned k = 0; k < x->nex && inc->nex < EXAMPLES_KEPT; k++)
			inc->ex[inc->nex++] = x->ex[k];
		work_add(a, inc);
	}
	free(g.v);
	free(g.slot);
	return;
fallback:
	/* Out of memory for the roll-up: one incident per key's group. */
	free(g.v);
	free(g.slot);
	for (size_t i = 0; i < n; i++) {
		const char *slash = memrchr(keys[i]->data, '/', keys[i]->topic_len);
		size_t len = slash ? (size_t)(slash - keys[i]->data) : 0;
		struct incident *inc = incident_get(a, keys[i]->data, len);
		if (!inc && !(inc = incident_new(a, keys[i]->data, len, now_ms)))
			continue;
		incident_join(a, inc, keys[i]);
	}
}

/* ------------------------------------------------------------ pending */

static size_t ptr_hash(const void *p, size_t cap)
{
	uint64_t x = (uint64_t)(uintptr_t)p;

	x ^= x >> 33;
	x *= 0xff51afd7ed558ccdull;
	x ^= x >> 33;
	return (size_t)x & (cap - 1);
}

static int ptab_rebuild(struct alerts *a, size_t want)
{
	size_t cap = 64;
	uint32_t *t;

	while (cap < 2 * want)
		cap <<= 1;
	if (cap != a->pcap) {
		if (!(t = calloc(cap, sizeof(*t))))
			return -ENOMEM;
		free(a->ptab);
		a->ptab = t;
		a->pcap = cap;
	} else {
		memset(a->ptab, 0, cap * sizeof(*a->ptab));
	}
	for (size_t i = 0; i < a->npend; i++) {
		size_t s = ptr_hash(a->pend[i].r, a->pcap);
		while (a->ptab[s])
			s = (s + 1) & (a->pcap - 1);
		a->ptab[s] = (uint32_t)(i + 1);
	}
	return 0;
}

static struct pend *pend_find(struct alerts *a, const struct rec *r)
{
	if (!a->pcap)
		return NULL;
	for (size_t s = ptr_hash(r, a->pcap); a->ptab[s]; s = (s + 1) & (a->pcap - 1))
		if (a->pend[a->ptab[s] - 1].r == r)
			return &a->pend[a->ptab[s] - 1];
	return NULL;
}

void alerts_key_changed(struct alerts *a, struct rec *r, int64_t now_ms)
{
	struct pend *p;
	size_t s;

	if (r->alert_state & AS_PENDING) {
		if ((p = pend_find(a, r)))
			p->t = now_ms;
		return;
	}
	if (a->npend == a->cappend) {
		size_t ncap = a->cappend ? a->cappend * 2 : 256;
		struct pend *np = ncap <= UINT32_MAX ? realloc(a->pend, ncap * sizeof(*np)) : NULL;
		if (!np)
			goto nomem;
		a->pend = np;
		a->cappend = ncap;
	}
	if (2 * (a->npend + 1) > a->pcap && ptab_rebuild(a, 2 * (a->npend + 1)) < 0)
		goto nomem;
	a->pend[a->npend] = (struct pend){ r, now_ms };
	s = ptr_hash(r, a->pcap);
	while (a->ptab[s])
		s = (s + 1) & (a->pcap - 1);
	a->ptab[s] = (uint32_t)++a->npend;
	r->alert_state |= AS_PENDING;
	if (a->window_due == NEVER)
		a->window_due = now_ms + a->min_hold_ms + a->group_wait_ms;
	return;
nomem:
	log_warnx("alerts: out of memory, change of %s not alerted", r->data);
}

/* The group wait is over: turn what still holds into incidents. */
static void flush(struct alerts *a, int64_t now_ms, alerts_eligible_fn eligible, void *ctx)
{
	struct rec **fresh_keys = NULL;
	size_t nnew = 0, keep = 0;
	int64_t next = NEVER;

	fresh_keys = malloc((a->npend ? a->npend : 1) * sizeof(*fresh_keys));
	for (size_t i = 0; i < a->npend; i++) {
		struct pend e = a->pend[i];
		struct rec *r = e.r;
		bool want = (r->flags & REC_STALE) && !(r->flags & (REC_DELETED | REC_NO_STALE));
		bool have = r->alert_state & AS_ALERTED;
		struct incident *inc;

		if (want == have) {
			r->alert_state &= (uint8_t)~AS_PENDING;
			continue;
		}
		if (now_ms - e.t < a->min_hold_ms || (want && !fresh_keys)) {
			a->pend[keep++] = e;
			if (e.t + a->min_hold_ms < next)
				next = e.t + a->min_hold_ms;
			continue;
		}
		r->alert_state &= (uint8_t)~AS_PENDING;
		if (want) {
			if (!eligible(r, now_ms, ctx))
				continue;
			r->alert_state |= AS_ALERTED;
			if ((inc = incident_find(a, r->data, r->topic_len)))
				incident_join(a, inc, r);
			else
				fresh_keys[nnew++] = r;
		} else {
			r->alert_state &= (uint8_t)~AS_ALERTED;
			if ((inc = incident_find(a, r->data, r->topic_len)))
				incident_leave(a, inc);
		}
	}
	a->npend = keep;
	if (ptab_rebuild(a, keep) < 0) {
		/* Without the table a pending key cannot be found again: give the
		 * kept ones up; they are re-reported by their next change. */
		for (size_t i = 0; i < keep; i++)
			a->pend[i].r->alert_state &= (uint8_t)~AS_PENDING;
		a->npend = 0;
		next = NEVER;
	}
	if (a->npend == 0 && a->cappend > 65536) {
		free(a->pend);
		a->pend = NULL;
		a->cappend = 0;
	}
	open_new(a, fresh_keys, nnew, now_ms);
	free(fresh_keys);
	a->window_due = next == NEVER ? NEVER : next + a->group_wait_ms;
}

/* --------------------------------------------------------------- API */

struct alerts *alerts_new(const struct conf *c, const struct stale_outlet *out)
{
	struct alerts *a = calloc(1, sizeof(*a));
	struct settings st;

	if (!a)
		return NULL;
	if (read_settings(c, &st) < 0 || itab_grow(a) < 0) {
		free(a->itab);
		free(a);
		return NULL;
	}
	take_settings(a, c, &st);
	if (out)
		a->out = *out;
	a->window_due = NEVER;
	a->rl = (struct log_ratelimit)LOG_RATELIMIT_INIT(10000, 10);
	return a;
}

void alerts_free(struct alerts *a)
{
	if (!a)
		return;
	for (size_t i = 0; i < a->nkids; i++) {
		int st;
		if (waitpid(a->kids[i].pid, &st, WNOHANG) == 0)
			log_info("alerts: leaving %s (pid %d) for %s to finish", a->argv ? a->argv[0] : "exec",
				 (int)a->kids[i].pid, a->kids[i].key);
		free(a->kids[i].key);
	}
	for (size_t i = 0; i < a->qlen; i++)
		job_free(&a->queue[(a->qhead + i) % ALERTS_EXEC_QUEUE]);
	if (a->qlen)
		log_warnx("alerts: %zu queued exec runs dropped at shutdown", a->qlen);
	for (size_t i = 0; i < a->icap; i++) {
		struct incident *p = a->itab[i], *next;
		for (; p; p = next) {
			next = p->next;
			free(p);
		}
	}
	free(a->itab);
	free(a->work);
	free(a->pend);
	free(a->ptab);
	free(a->topic);
	free(a->exec_line);
	free_argv(a->argv);
	free(a);
}

int alerts_reconfigure(struct alerts *a, const struct conf *c)
{
	struct settings st;
	char *old = NULL;
	bool moved;

	if (read_settings(c, &st) < 0)
		return -ENOMEM;
	moved = (a->topic == NULL) != (st.topic == NULL) ||
		(a->topic && strcmp(a->topic, st.topic) != 0);
	if (moved && a->topic && a->out.publish) {
		/* Clear what we hold under the old topic; republish under the new. */
		for (size_t i = 0; i < a->icap; i++) {
			for (struct incident *p = a->itab[i]; p; p = p->next) {
				if (!p->published || !(old = group_topic(a, p->prefix, p->len)))
					continue;
				a->out.publish(a->out.ctx, old, "", 0);
				free(old);
			}
		}
		if (a->mirror == MIRROR_OPEN) {
			size_t n = a->topic_len + 8;
			if ((old = malloc(n))) {
				snprintf(old, n, "%s/mirror", a->topic);
				a->out.publish(a->out.ctx, old, "", 0);
				free(old);
			}
		}
	}
	take_settings(a, c, &st);
	if (moved) {
		for (size_t i = 0; i < a->icap; i++) {
			for (struct incident *p = a->itab[i]; p; p = p->next) {
				if (p->published && !p->adopted) {
					p->mqtt_only = true;
					p->last_pub_ms = 0;
					work_add(a, p);
				}
			}
		}
	}
	return 0;
}

void alerts_link(struct alerts *a, bool synced, int64_t now_ms)
{
	if (a->link_known && synced == a->synced)
		return;
	a->link_known = true;
	a->synced = synced;
	if (!synced) {
		a->unsynced_since_ms = now_ms;
		if (a->mirror == MIRROR_OK) {
			a->mirror = MIRROR_WAITING;
			a->mirror_due_ms = now_ms + mirror_wait(a);
		} else if (a->mirror == MIRROR_RESOLVING) {
			a->mirror = MIRROR_OPEN; /* never told it was over */
		}
		return;
	}
	a->synced_since_ms = now_ms;
	if (a->mirror == MIRROR_WAITING)
		a->mirror = MIRROR_OK; /* a blip: nobody is paged */
	else if (a->mirror == MIRROR_OPEN)
		a->mirror = MIRROR_RESOLVING;
	/* Adopted alerts settle from this re-sync on. */
	for (size_t i = 0; i < a->icap; i++)
		for (struct incident *p = a->itab[i]; p; p = p->next)
			if (p->adopted)
				work_add(a, p);
}

void alerts_adopt(struct alerts *a, const struct index *ix, const struct rec *r,
		  int64_t now_ms)
{
	json_t *o, *kind, *state, *group;
	json_error_t err;
	const void *pv;
	size_t n;

	if (!a->topic || !r->payload_len || r->topic_len <= a->topic_len ||
	    rec_payload(ix, r, &pv, &n) < 0 || !n)
		return;
	o = json_loadb(pv, n, 0, &err);
	if (!o)
		return;
	kind = json_object_get(o, "alert");
	state = json_object_get(o, "state");
	group = json_object_get(o, "group");
	if (json_is_string(kind) && strcmp(json_string_value(kind), "mirror") == 0 &&
	    json_is_string(state) && strcmp(json_string_value(state), "disconnected") == 0 &&
	    strcmp(r->data + a->topic_len, "/mirror") == 0) {
		if (a->mirror == MIRROR_OK || a->mirror == MIRROR_WAITING) {
			a->mirror = a->synced ? MIRROR_RESOLVING : MIRROR_OPEN;
			if (!a->unsynced_since_ms)
				a->unsynced_since_ms = now_ms;
			log_info("alerts: adopted the mirror alert of an earlier run");
		}
	} else if (json_is_string(kind) && strcmp(json_string_value(kind), "stale") == 0 &&
		   json_is_string(state) && strcmp(json_string_value(state), "stale") == 0 &&
		   json_is_string(group)) {
		const char *p = json_string_value(group);
		size_t len = json_string_length(group);
		char *expect = group_topic(a, p, len);
		struct incident *inc;

		if (expect && strcmp(expect, r->data) == 0 && !incident_get(a, p, len) &&
		    (inc = incident_new(a, p, len, now_ms))) {
			inc->published = true;
			inc->adopted = true;
			inc->last_pub_ms = now_ms;
			work_add(a, inc);
			log_info("alerts: adopted the open alert for %s of an earlier run", inc->prefix);
		}
		free(expect);
	}
	json_decref(o);
}

int64_t alerts_tick(struct alerts *a, int64_t now_ms, int64_t settle_ms,
		    alerts_eligible_fn eligible, void *ctx)
{
	int64_t next = NEVER, t;
	size_t keep = 0;

	if (a->mirror == MIRROR_WAITING && now_ms >= a->mirror_due_ms) {
		mirror_publish(a, true, now_ms);
		a->mirror = MIRROR_OPEN;
	} else if (a->mirror == MIRROR_RESOLVING) {
		mirror_publish(a, false, now_ms);
		a->mirror = MIRROR_OK;
	}
	if (a->mirror == MIRROR_WAITING && a->mirror_due_ms - now_ms < next)
		next = a->mirror_due_ms - now_ms;

	/* No key alert leaves while we are not synced: what changed during
	 * our absence is judged after the re-sync. */
	if (a->synced && a->npend && now_ms >= a->window_due)
		flush(a, now_ms, eligible, ctx);
	if (a->synced && a->npend && a->window_due - now_ms < next)
		next = a->window_due - now_ms;

	for (size_t i = 0; i < a->nwork; i++) {
		struct incident *inc = a->work[i];
		int64_t due;

		if (inc->adopted && inc->count == 0) {
			due = a->synced ? a->synced_since_ms + settle_ms : NEVER;
		} else {
			inc->adopted = false;
			due = inc->published ? inc->last_pub_ms + group_interval(a) : now_ms;
		}
		if (!a->synced || now_ms < due) {
			a->work[keep++] = inc;
			if (a->synced && due - now_ms < next)
				next = due - now_ms;
			continue;
		}
		inc->listed = false;
		incident_publish(a, inc, now_ms); /* may free inc */
	}
	a->nwork = keep;

	t = exec_reap(a, now_ms);
	if (t < next)
		next = t;
	return next < 1 ? 1 : next;
}

size_t alerts_open_incidents(const struct alerts *a)
{
	return a->nincidents;
}

size_t alerts_pending(const struct alerts *a)
{
	return a->npend;
}

size_t alerts_exec_running(const struct alerts *a)
{
	return a->nkids;
}

size_t alerts_exec_queued(const struct alerts *a)
{
	return a->qlen;
}
