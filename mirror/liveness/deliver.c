/* SPDX-License-Identifier: MIT */
/* deliver.c: the alert delivery thread: a bounded queue in, retained MQTT publishes and exec runs out. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/clock.h"
#include "common/log.h"
#include "common/stats.h"
#include "mirror/liveness/deliver.h"

extern char **environ;

#define NEVER INT64_MAX
#define EXEC_MAX_ARGS 32
#define EXEC_TIMEOUT_DEFAULT_MS 10000

/* A queued alert: one allocation, the strings in buf. */
struct item {
	char *key, *topic, *payload, *state, *group;
	size_t len;
	size_t size;      /* what it counts against DELIVER_QUEUE_BYTES */
	bool clear, exec;
	char buf[];
};

struct child {
	pid_t pid;
	bool killed;
	int64_t deadline_ms;
	char *key;
};

/* An exec run waiting for a slot: the item it came from (exec set). */
struct exec_settings {
	char **argv;      /* NULL: no exec */
	char *line;
	int64_t timeout_ms;
};

struct deliver {
	struct deliver_outlet out;

	/* Shared with the producers, under mu. */
	pthread_mutex_t mu;
	pthread_cond_t cv;
	struct item *queue[DELIVER_QUEUE_MAX];
	size_t qhead, qlen, qbytes;
	struct exec_settings *new_settings; /* handed over by deliver_configure */
	bool settings_changed;
	bool stop, started;
	pthread_t thread;

	/* The pumping thread's own. */
	struct exec_settings cur;
	struct child kids[DELIVER_EXEC_MAX_CHILDREN];
	size_t nkids;
	struct item *waiting[DELIVER_EXEC_QUEUE];
	size_t whead, wlen;

	struct log_ratelimit rl_drop; /* producers */
	struct log_ratelimit rl_exec; /* the thread */
};

/* ------------------------------------------------------------ settings */

static void free_argv(char **argv)
{
	if (!argv)
		return;
	for (char **p = argv; *p; p++)
		free(*p);
	free(argv);
}

static void settings_free(struct exec_settings *s)
{
	if (!s)
		return;
	free_argv(s->argv);
	free(s->line);
	s->argv = NULL;
	s->line = NULL;
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

int deliver_configure(struct deliver *d, const char *exec_line, int64_t timeout_ms)
{
	struct exec_settings *s = calloc(1, sizeof(*s));

	if (!s)
		return -ENOMEM;
	s->timeout_ms = timeout_ms > 0 ? timeout_ms : EXEC_TIMEOUT_DEFAULT_MS;
	if (exec_line && exec_line[strspn(exec_line, " \t")]) {
		if (!(s->line = strdup(exec_line)) || !(s->argv = split_exec(exec_line))) {
			settings_free(s);
			free(s);
			return -ENOMEM;
		}
	}
	pthread_mutex_lock(&d->mu);
	if (d->new_settings) {
		settings_free(d->new_settings);
		free(d->new_settings);
	}
	d->new_settings = s;
	d->settings_changed = true;
	pthread_cond_signal(&d->cv);
	pthread_mutex_unlock(&d->mu);
	return 0;
}

/* ---------------------------------------------------------------- exec */

static void exec_failed(struct deliver *d, int64_t now_ms, const char *key, const char *why)
{
	uint32_t dropped = 0;

	STAT_INC(alert_exec_failures);
	if (log_ratelimit_ok(&d->rl_exec, now_ms, &dropped)) {
		if (dropped)
			log_warnx("alerts: %" PRIu32 " more exec failures not logged", dropped);
		log_warnx("alerts: exec %s for the %s alert: %s", d->cur.line ? d->cur.line : "-", key, why);
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

/* Start one exec run: the alert JSON (and a newline) is written into the
 * pipe before the program starts (it fits the pipe buffer), so a program
 * that does not read cannot block this thread nor SIGPIPE us. */
static void exec_start(struct deliver *d, const struct item *j, int64_t now_ms)
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

	if (!d->cur.argv)
		return;
	/* Non-blocking: should the pipe be smaller than the alert (a user
	 * over its pipe-buffer quota gets 4 KiB pipes), the write comes up
	 * short and the run is refused rather than this thread hanging. */
	if (pipe2(fds, O_CLOEXEC | O_NONBLOCK) < 0) {
		exec_failed(d, now_ms, j->key, "cannot make a pipe, not run");
		return;
	}
	w = write(fds[1], j->payload, j->len + 1);
	close(fds[1]);
	(void)fcntl(fds[0], F_SETFL, 0);   /* the program's stdin blocks as usual */
	if (w < 0 || (size_t)w != j->len + 1) {
		close(fds[0]);
		exec_failed(d, now_ms, j->key, "cannot write the alert to its stdin, not run");
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
		exec_failed(d, now_ms, j->key, "out of memory, not run");
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
	rc = posix_spawnp(&pid, d->cur.argv[0], &fa, &attr, d->cur.argv, envp);
	posix_spawnattr_destroy(&attr);
	posix_spawn_file_actions_destroy(&fa);
	close(fds[0]);
	if (rc != 0) {
		char why[128];
		snprintf(why, sizeof(why), "cannot start: %s", strerror(rc));
		exec_failed(d, now_ms, j->key, why);
		goto out;
	}
	d->kids[d->nkids] = (struct child){
		.pid = pid, .deadline_ms = now_ms + d->cur.timeout_ms, .key = strdup(j->key),
	};
	log_debug("alerts: started %s (pid %d) for the %s alert", d->cur.argv[0], (int)pid, j->key);
	d->nkids++;
out:
	for (int i = 0; i < 3; i++)
		free(extra[i]);
	free(envp);
}

static void exec_pump(struct deliver *d, int64_t now_ms)
{
	while (d->wlen && d->nkids < DELIVER_EXEC_MAX_CHILDREN) {
		struct item *j = d->waiting[d->whead];

		d->whead = (d->whead + 1) % DELIVER_EXEC_QUEUE;
		d->wlen--;
		exec_start(d, j, now_ms);
		free(j);
	}
}

/* Queue an exec run (takes j). The waiting runs hold current states: a
 * newer alert for the same key replaces an older one; when full, the
 * oldest goes. */
static void exec_enqueue(struct deliver *d, struct item *j, int64_t now_ms)
{
	if (!d->cur.argv) {
		free(j);
		return;
	}
	for (size_t i = 0; i < d->wlen; i++) {
		struct item **q = &d->waiting[(d->whead + i) % DELIVER_EXEC_QUEUE];
		if (strcmp((*q)->key, j->key) == 0) {
			free(*q);
			*q = j;
			return;
		}
	}
	if (d->wlen == DELIVER_EXEC_QUEUE) {
		struct item *old = d->waiting[d->whead];
		exec_failed(d, now_ms, old->key, "too many alerts waiting for exec, dropped");
		free(old);
		d->whead = (d->whead + 1) % DELIVER_EXEC_QUEUE;
		d->wlen--;
	}
	d->waiting[(d->whead + d->wlen) % DELIVER_EXEC_QUEUE] = j;
	d->wlen++;
	exec_pump(d, now_ms);
}

/* Reap finished children without blocking; kill the ones past their time. */
static int64_t exec_reap(struct deliver *d, int64_t now_ms)
{
	int64_t next = NEVER;
	size_t i = 0;

	while (i < d->nkids) {
		struct child *k = &d->kids[i];
		int st = 0;
		pid_t rc = waitpid(k->pid, &st, WNOHANG);

		if (rc == 0) {
			if (!k->killed && now_ms >= k->deadline_ms) {
				char why[64];
				if (kill(-k->pid, SIGKILL) < 0)
					kill(k->pid, SIGKILL);
				k->killed = true;
				snprintf(why, sizeof(why), "timed out after %" PRId64 " ms, killed",
					 d->cur.timeout_ms);
				exec_failed(d, now_ms, k->key ? k->key : "?", why);
			}
			if (!k->killed && k->deadline_ms - now_ms < next)
				next = k->deadline_ms - now_ms;
			if (DELIVER_REAP_MS < next)
				next = DELIVER_REAP_MS; /* poll again, without spinning */
			i++;
			continue;
		}
		if (rc == k->pid && !k->killed) {
			char why[64];
			if (WIFEXITED(st) && WEXITSTATUS(st) == 0) {
				log_debug("alerts: exec for the %s alert done", k->key ? k->key : "?");
			} else {
				if (WIFEXITED(st))
					snprintf(why, sizeof(why), "exit status %d", WEXITSTATUS(st));
				else
					snprintf(why, sizeof(why), "killed by signal %d",
						 WIFSIGNALED(st) ? WTERMSIG(st) : 0);
				exec_failed(d, now_ms, k->key ? k->key : "?", why);
			}
		} else if (rc < 0 && errno != ECHILD) {
			i++; /* EINTR: next time */
			continue;
		}
		free(k->key);
		d->kids[i] = d->kids[--d->nkids];
	}
	exec_pump(d, now_ms);
	if (d->nkids && DELIVER_REAP_MS < next)
		next = DELIVER_REAP_MS;
	return next;
}

/* ---------------------------------------------------------------- queue */

static size_t put(char *buf, size_t at, const char *s, size_t n, char **ret)
{
	memcpy(buf + at, s, n);
	buf[at + n] = '\0';
	*ret = buf + at;
	return at + n + 1;
}

/* Take the oldest queued item (mu held); NULL when empty. */
static struct item *queue_pop(struct deliver *d)
{
	struct item *it;

	if (!d->qlen)
		return NULL;
	it = d->queue[d->qhead];
	d->qhead = (d->qhead + 1) % DELIVER_QUEUE_MAX;
	d->qlen--;
	d->qbytes -= it->size;
	return it;
}

int deliver_push(struct deliver *d, const struct deliver_alert *al, int64_t now_ms)
{
	size_t nk = strlen(al->key), nt = al->topic ? strlen(al->topic) : 0;
	size_t ns = al->state ? strlen(al->state) : 0, ng = al->group ? strlen(al->group) : 0;
	/* payload gets a newline for exec's stdin, then its NUL */
	size_t size = sizeof(struct item) + nk + nt + ns + ng + al->len + 6;
	struct item *it = size <= DELIVER_QUEUE_BYTES ? malloc(size) : NULL;
	struct item *old[8];
	size_t nold = 0, ndrop = 0, at = 0;
	uint32_t dropped = 0;

	if (!it) {
		STAT_INC(alerts_dropped);
		return -ENOMEM;
	}
	at = put(it->buf, at, al->key, nk, &it->key);
	at = put(it->buf, at, al->topic ? al->topic : "", nt, &it->topic);
	at = put(it->buf, at, al->state ? al->state : "", ns, &it->state);
	at = put(it->buf, at, al->group ? al->group : "", ng, &it->group);
	memcpy(it->buf + at, al->payload, al->len);
	it->buf[at + al->len] = '\n';
	it->buf[at + al->len + 1] = '\0';
	it->payload = it->buf + at;
	if (!al->topic)
		it->topic = NULL;
	if (!al->group)
		it->group = NULL;
	it->len = al->len;
	it->size = size;
	it->clear = al->clear;
	it->exec = al->exec;

	/* Make room by dropping the oldest; they are freed (and the log line
	 * written) after the mutex is released. */
	pthread_mutex_lock(&d->mu);
	while (d->qlen == DELIVER_QUEUE_MAX || d->qbytes + size > DELIVER_QUEUE_BYTES) {
		struct item *o = queue_pop(d);
		if (nold < sizeof(old) / sizeof(old[0]))
			old[nold++] = o;
		else
			free(o);
		ndrop++;
	}
	d->queue[(d->qhead + d->qlen) % DELIVER_QUEUE_MAX] = it;
	d->qlen++;
	d->qbytes += size;
	pthread_cond_signal(&d->cv);
	pthread_mutex_unlock(&d->mu);
	if (ndrop) {
		STAT_ADD(alerts_dropped, ndrop);
		if (log_ratelimit_ok(&d->rl_drop, now_ms, &dropped)) {
			if (dropped)
				log_warnx("alerts: %" PRIu32 " more dropped alerts not logged", dropped);
			log_warnx("alerts: delivery queue full (%d alerts or %u bytes), %zu older "
				  "alert(s) dropped, e.g. %s", DELIVER_QUEUE_MAX, DELIVER_QUEUE_BYTES,
				  ndrop, old[0]->key);
		}
		for (size_t i = 0; i < nold; i++)
			free(old[i]);
	}
	return 0;
}

size_t deliver_queued(struct deliver *d)
{
	size_t n;

	pthread_mutex_lock(&d->mu);
	n = d->qlen;
	pthread_mutex_unlock(&d->mu);
	return n;
}

size_t deliver_exec_running(const struct deliver *d)
{
	return d->nkids;
}

size_t deliver_exec_queued(const struct deliver *d)
{
	return d->wlen;
}

/* --------------------------------------------------------------- thread */

int64_t deliver_pump(struct deliver *d, int64_t now_ms)
{
	struct exec_settings *ns = NULL;
	struct item *it;

	pthread_mutex_lock(&d->mu);
	if (d->settings_changed) {
		ns = d->new_settings;
		d->new_settings = NULL;
		d->settings_changed = false;
	}
	pthread_mutex_unlock(&d->mu);
	if (ns) {
		settings_free(&d->cur);
		d->cur = *ns;
		free(ns);
	}
	/* One at a time, the mutex held only to take it: a producer never
	 * waits for a publish or a spawn. */
	for (;;) {
		pthread_mutex_lock(&d->mu);
		it = queue_pop(d);
		pthread_mutex_unlock(&d->mu);
		if (!it)
			break;
		if (it->topic && d->out.publish) {
			d->out.publish(d->out.ctx, it->topic, it->payload, it->len);
			if (it->clear)
				d->out.publish(d->out.ctx, it->topic, "", 0);
		}
		if (it->exec)
			exec_enqueue(d, it, now_ms); /* takes it */
		else
			free(it);
	}
	return exec_reap(d, now_ms);
}

static void *deliver_main(void *arg)
{
	struct deliver *d = arg;
	int64_t wait_ms = 0;

	pthread_mutex_lock(&d->mu);
	while (!d->stop) {
		if (!d->qlen && !d->settings_changed && wait_ms > 0) {
			if (wait_ms == NEVER) {
				pthread_cond_wait(&d->cv, &d->mu);
			} else {
				struct timespec ts;

				clock_deadline(CLOCK_MONOTONIC, wait_ms, &ts);
				pthread_cond_timedwait(&d->cv, &d->mu, &ts);
			}
			wait_ms = 0; /* woken or timed out: pump once before waiting again */
			continue;
		}
		pthread_mutex_unlock(&d->mu);
		wait_ms = deliver_pump(d, clock_mono_ms());
		pthread_mutex_lock(&d->mu);
	}
	pthread_mutex_unlock(&d->mu);
	return NULL;
}

struct deliver *deliver_new(const struct deliver_outlet *out)
{
	struct deliver *d = calloc(1, sizeof(*d));
	pthread_condattr_t ca;

	if (!d)
		return NULL;
	if (out)
		d->out = *out;
	d->cur.timeout_ms = EXEC_TIMEOUT_DEFAULT_MS;
	d->rl_drop = (struct log_ratelimit)LOG_RATELIMIT_INIT(10000, 10);
	d->rl_exec = (struct log_ratelimit)LOG_RATELIMIT_INIT(10000, 10);
	pthread_mutex_init(&d->mu, NULL);
	/* Timed waits on the monotonic clock: a wall-clock step must not
	 * turn a 50 ms reap poll into an hour. */
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&d->cv, &ca);
	pthread_condattr_destroy(&ca);
	return d;
}

int deliver_start(struct deliver *d)
{
	int rc;

	if (d->started)
		return -EALREADY;
	d->stop = false;
	rc = pthread_create(&d->thread, NULL, deliver_main, d);
	if (rc)
		return -rc;
	d->started = true;
	return 0;
}

void deliver_stop(struct deliver *d)
{
	size_t n;

	if (!d)
		return;
	if (d->started) {
		pthread_mutex_lock(&d->mu);
		d->stop = true;
		pthread_cond_signal(&d->cv);
		pthread_mutex_unlock(&d->mu);
		pthread_join(d->thread, NULL);
		d->started = false;
	}
	pthread_mutex_lock(&d->mu);
	n = d->qlen;
	while (d->qlen)
		free(queue_pop(d));
	pthread_mutex_unlock(&d->mu);
	if (n)
		log_warnx("alerts: %zu alerts not delivered at shutdown", n);
}

void deliver_free(struct deliver *d)
{
	if (!d)
		return;
	deliver_stop(d);
	for (size_t i = 0; i < d->nkids; i++) {
		int st;
		if (waitpid(d->kids[i].pid, &st, WNOHANG) == 0)
			log_info("alerts: leaving %s (pid %d) for %s to finish",
				 d->cur.argv ? d->cur.argv[0] : "exec", (int)d->kids[i].pid,
				 d->kids[i].key ? d->kids[i].key : "?");
		free(d->kids[i].key);
	}
	for (size_t i = 0; i < d->wlen; i++)
		free(d->waiting[(d->whead + i) % DELIVER_EXEC_QUEUE]);
	if (d->wlen)
		log_warnx("alerts: %zu queued exec runs dropped at shutdown", d->wlen);
	if (d->new_settings) {
		settings_free(d->new_settings);
		free(d->new_settings);
	}
	settings_free(&d->cur);
	pthread_cond_destroy(&d->cv);
	pthread_mutex_destroy(&d->mu);
	free(d);
}
