/* SPDX-License-Identifier: MIT */
/* fair.c: who may hold an HTTP connection: head deadlines, idle reclaim, per-address limits, watch streams apart. */
#include "api/fair.h"

#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>

enum cstate {
	C_WAITING,      /* accepted, no complete head yet: on `waiting` */
	C_BUSY,         /* a request is being answered */
	C_IDLE,         /* keep-alive between requests: on `idle` */
	C_WATCH,        /* a watch stream, outside the regular count */
	C_REFUSED,      /* no slot: its request gets a 503; on `refused` */
	C_CLOSING,      /* killed; the library has not closed it yet */
	C_STATE_MAX
};

struct fair_conn {
	TAILQ_ENTRY(fair_conn) q;       /* waiting, idle or refused, oldest first */
	TAILQ_ENTRY(fair_conn) remote;  /* regular connections from remote addresses */
	enum cstate state;
	bool local;
	bool on_remote;
	int fd;
	int family;
	uint8_t ip[16];
	int64_t since;                  /* when it began to wait (accept or last answer) */
	int64_t deadline;               /* its head must be complete by then */
};

TAILQ_HEAD(conn_list, fair_conn);

struct fair {
	pthread_mutex_t mu;
	struct fair_limits l;
	struct conn_list waiting, idle, refused, remote;
	size_t n_regular, n_waiting, n_idle, n_watch, n_refused, n_closing;
};

bool fair_is_local(const struct sockaddr *sa, socklen_t salen)
{
	if (!sa || salen < (socklen_t)sizeof(sa_family_t))
		return false;
	if (sa->sa_family == AF_UNIX)
		return true;
	if (sa->sa_family == AF_INET && salen >= (socklen_t)sizeof(struct sockaddr_in)) {
		const uint8_t *b = (const uint8_t *)&((const struct sockaddr_in *)sa)->sin_addr;

		return b[0] == 127;
	}
	if (sa->sa_family == AF_INET6 && salen >= (socklen_t)sizeof(struct sockaddr_in6)) {
		const struct in6_addr *a = &((const struct sockaddr_in6 *)sa)->sin6_addr;

		return IN6_IS_ADDR_LOOPBACK(a) || (IN6_IS_ADDR_V4MAPPED(a) && a->s6_addr[12] == 127);
	}
	return false;
}

/* The address part that names a peer (no port). */
static void peer_of(struct fair_conn *c, const struct sockaddr *sa, socklen_t salen)
{
	c->family = sa ? sa->sa_family : AF_UNSPEC;
	memset(c->ip, 0, sizeof(c->ip));
	if (c->family == AF_INET && salen >= (socklen_t)sizeof(struct sockaddr_in))
		memcpy(c->ip, &((const struct sockaddr_in *)sa)->sin_addr, 4);
	else if (c->family == AF_INET6 && salen >= (socklen_t)sizeof(struct sockaddr_in6))
		memcpy(c->ip, &((const struct sockaddr_in6 *)sa)->sin6_addr, 16);
}

int fair_new(const struct fair_limits *l, struct fair **ret)
{
	struct fair *f = calloc(1, sizeof(*f));

	if (!f)
		return -ENOMEM;
	f->l = *l;
	if (f->l.max_conns == 0)
		f->l.max_conns = 1;
	if (f->l.per_ip == 0)
		f->l.per_ip = 1;
	pthread_mutex_init(&f->mu, NULL);
	TAILQ_INIT(&f->waiting);
	TAILQ_INIT(&f->idle);
	TAILQ_INIT(&f->refused);
	TAILQ_INIT(&f->remote);
	*ret = f;
	return 0;
}

void fair_free(struct fair *f)
{
	if (!f)
		return;
	pthread_mutex_destroy(&f->mu);
	free(f);
}

/* Take c off the lists and counts of its state (mu held). */
static void leave(struct fair *f, struct fair_conn *c)
{
	switch (c->state) {
	case C_WAITING:
		TAILQ_REMOVE(&f->waiting, c, q);
		f->n_waiting--;
		f->n_regular--;
		break;
	case C_IDLE:
		TAILQ_REMOVE(&f->idle, c, q);
		f->n_idle--;
		f->n_regular--;
		break;
	case C_BUSY:
		f->n_regular--;
		break;
	case C_WATCH:
		f->n_watch--;
		break;
	case C_REFUSED:
		TAILQ_REMOVE(&f->refused, c, q);
		f->n_refused--;
		break;
	case C_CLOSING:
		f->n_closing--;
		break;
	default:
		break;
	}
	if (c->on_remote) {
		TAILQ_REMOVE(&f->remote, c, remote);
		c->on_remote = false;
	}
}

/* Put c into state s (mu held; c has left its previous one). */
static void enter(struct fair *f, struct fair_conn *c, enum cstate s, int64_t now_ms)
{
	c->state = s;
	switch (s) {
	case C_WAITING:
	case C_IDLE:
		c->since = now_ms;
		c->deadline = now_ms + (s == C_WAITING ? f->l.head_ms : f->l.idle_ms);
		TAILQ_INSERT_TAIL(s == C_WAITING ? &f->waiting : &f->idle, c, q);
		if (s == C_WAITING)
			f->n_waiting++;
		else
			f->n_idle++;
		f->n_regular++;
		break;
	case C_BUSY:
		f->n_regular++;
		break;
	case C_WATCH:
		f->n_watch++;
		break;
	case C_REFUSED:
		c->since = now_ms;
		c->deadline = now_ms + f->l.head_ms;
		TAILQ_INSERT_TAIL(&f->refused, c, q);
		f->n_refused++;
		break;
	case C_CLOSING:
		f->n_closing++;
		break;
	default:
		break;
	}
	if (!c->local && (s == C_WAITING || s == C_IDLE || s == C_BUSY)) {
		TAILQ_INSERT_TAIL(&f->remote, c, remote);
		c->on_remote = true;
	}
}

static void kill_conn(struct fair *f, struct fair_conn *c, enum fair_reason why)
{
	leave(f, c);
	enter(f, c, C_CLOSING, 0);
	f->l.kill(f->l.ctx, c->fd, why);
}

/*
** The connection to reclaim: the oldest one waiting for a head (first
** request or keep-alive), skipping those with input the library has not
** read yet (a request already sent: its worker is busy elsewhere, and
** the client would lose it). At most FAIR_SCAN candidates are looked at;
** NULL when none of them will do.
*/
#define FAIR_SCAN 32

static bool has_input(const struct fair *f, const struct fair_conn *c)
{
	return f->l.has_input && f->l.has_input(f->l.ctx, c->fd);
}

static struct fair_conn *reclaim_candidate(struct fair *f)
{
	struct fair_conn *w = TAILQ_FIRST(&f->waiting), *i = TAILQ_FIRST(&f->idle);

	for (size_t n = 0; n < FAIR_SCAN && (w || i); n++) {
		struct fair_conn *c;

		if (w && (!i || w->since < i->since)) {
			c = w;
			w = TAILQ_NEXT(w, q);
		} else {
			c = i;
			i = TAILQ_NEXT(i, q);
		}
		if (!has_input(f, c))
			return c;
	}
	return NULL;
}

int fair_open(struct fair *f, int fd, const struct sockaddr *sa, socklen_t salen, int64_t now_ms,
	      struct fair_conn **ret, bool *ret_refused)
{
	struct fair_conn *c = calloc(1, sizeof(*c)), *victim = NULL;
	bool refuse = false;

	if (!c)
		return -ENOMEM;
	c->fd = fd;
	c->local = fair_is_local(sa, salen);
	peer_of(c, sa, salen);
	pthread_mutex_lock(&f->mu);
	if (!c->local) {
		/* Linear in this address family's remote connections, at
		 * most max_conns: a sidecar has few remote clients. */
		struct fair_conn *o, *mine = NULL;
		size_t same = 0;

		TAILQ_FOREACH(o, &f->remote, remote) {
			if (o->family != c->family || memcmp(o->ip, c->ip, sizeof(c->ip)) != 0)
				continue;
			same++;
			if ((o->state == C_WAITING || o->state == C_IDLE) &&
			    (!mine || o->since < mine->since) && !has_input(f, o))
				mine = o;
		}
		if (same >= f->l.per_ip) {
			if (mine)
				kill_conn(f, mine, FAIR_RECLAIMED);
			else
				refuse = true;
		}
	}
	if (!refuse && f->n_regular >= f->l.max_conns) {
		if ((victim = reclaim_candidate(f)))
			kill_conn(f, victim, FAIR_RECLAIMED);
		else
			refuse = true;
	}
	enter(f, c, refuse ? C_REFUSED : C_WAITING, now_ms);
	pthread_mutex_unlock(&f->mu);
	*ret = c;
	*ret_refused = refuse;
	return 0;
}

void fair_close(struct fair *f, struct fair_conn *c)
{
	if (!c)
		return;
	pthread_mutex_lock(&f->mu);
	leave(f, c);
	pthread_mutex_unlock(&f->mu);
	free(c);
}

bool fair_busy(struct fair *f, struct fair_conn *c)
{
	bool admitted;

	if (!c)
		return true;
	pthread_mutex_lock(&f->mu);
	if (c->state == C_WAITING || c->state == C_IDLE) {
		leave(f, c);
		enter(f, c, C_BUSY, 0);
	}
	admitted = c->state != C_REFUSED;
	pthread_mutex_unlock(&f->mu);
	return admitted;
}

void fair_idle(struct fair *f, struct fair_conn *c, int64_t now_ms)
{
	if (!c)
		return;
	pthread_mutex_lock(&f->mu);
	if (c->state != C_CLOSING && c->state != C_REFUSED) {
		leave(f, c);
		enter(f, c, C_IDLE, now_ms);
	}
	pthread_mutex_unlock(&f->mu);
}

void fair_watch(struct fair *f, struct fair_conn *c)
{
	if (!c)
		return;
	pthread_mutex_lock(&f->mu);
	if (c->state == C_BUSY) {
		leave(f, c);
		enter(f, c, C_WATCH, 0);
	}
	pthread_mutex_unlock(&f->mu);
}

int64_t fair_expire(struct fair *f, int64_t now_ms)
{
	struct conn_list *lists[3] = { &f->waiting, &f->idle, &f->refused };
	int64_t next = INT64_MAX;

	pthread_mutex_lock(&f->mu);
	for (size_t i = 0; i < 3; i++) {
		struct fair_conn *c;

		/* Each list is in order of its deadlines (one timeout each). */
		while ((c = TAILQ_FIRST(lists[i])) && c->deadline <= now_ms)
			kill_conn(f, c, FAIR_HEAD_TIMEOUT);
		if (c && c->deadline < next)
			next = c->deadline;
	}
	pthread_mutex_unlock(&f->mu);
	return next;
}

void fair_counts(struct fair *f, struct fair_counts *ret)
{
	pthread_mutex_lock(&f->mu);
	ret->regular = f->n_regular;
	ret->waiting = f->n_waiting;
	ret->idle = f->n_idle;
	ret->watch = f->n_watch;
	ret->refused = f->n_refused;
	ret->closing = f->n_closing;
	pthread_mutex_unlock(&f->mu);
}
