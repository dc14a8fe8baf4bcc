/* The GCRA arithmetic of the rate limiter (core/gcra.c), driven by a hand-held clock: a
 * burst goes at once and then units come one interval apart; the wait a refused take
 * reports is exactly when it fits; a cost above the burst never fits; adjust charges and
 * gives back without ever making more than a burst free; and a randomized run against
 * the definition (over any window, what was taken never exceeds burst + rate * window). */
#include "test.h"

#include "gcra.h"     /* on purpose: the arithmetic is the core's, not public */
#include "internal.h"

#define MS INT64_C(1000000) /* the test's time unit is the nanosecond, as the binding's */

static void test_init(void) {
  bt_gcra_t g;
  CHECK(bt__gcra_init(&g, 0, 1000, 1) == BT_EINVAL);
  CHECK(bt__gcra_init(&g, 10, 0, 1) == BT_EINVAL);
  CHECK(bt__gcra_init(&g, 10, 1000, 0.5) == BT_EINVAL);
  CHECK(bt__gcra_init(&g, 10, 1e30, 1) == BT_EINVAL);
  CHECK(bt__gcra_init(&g, 1e-300, 1000, 1) == BT_EINVAL);
  CHECK(bt__gcra_init(&g, 600, 60000.0 * MS, 1) == 0);
  CHECK(g.interval == 100.0 * MS && g.tolerance == 100 * MS && g.tat == 0);
}

/* 600 a minute, a burst of 1: one every 100 ms, and 60 take 5.9 s. */
static void test_spacing(void) {
  bt_gcra_t g;
  CHECK(bt__gcra_init(&g, 600, 60000.0 * MS, 1) == 0);
  int64_t now = 5 * MS, first = now;
  for (int i = 0; i < 60; i++) {
    int64_t w = bt__gcra_take(&g, now, 1);
    if (w > 0) {
      CHECK(bt__gcra_take(&g, now + w - 1, 1) == 1);  /* one unit of time early: refused */
      now += w;
      CHECK(bt__gcra_take(&g, now, 1) == 0);           /* exactly on time: taken */
    }
    CHECK(i == 0 || w == 100 * MS);
  }
  CHECK(now - first == 5900 * MS);
}

static void test_burst(void) {
  bt_gcra_t g;
  CHECK(bt__gcra_init(&g, 10, 1000.0 * MS, 5) == 0);  /* 10/s, 5 at once */
  int64_t now = 1000 * MS;
  CHECK(bt__gcra_available(&g, now) == 5);
  for (int i = 0; i < 5; i++) CHECK(bt__gcra_take(&g, now, 1) == 0);
  CHECK(bt__gcra_available(&g, now) == 0);
  CHECK(bt__gcra_wait(&g, now, 1) == 100 * MS);
  CHECK(bt__gcra_wait(&g, now, 3) == 300 * MS);
  CHECK(bt__gcra_take(&g, now, 1) == 100 * MS);   /* refused: nothing changed */
  CHECK(bt__gcra_available(&g, now + 250 * MS) == 2);
  CHECK(bt__gcra_wait(&g, now, 6) == -1);          /* more than a burst: never */
  CHECK(bt__gcra_take(&g, now, 6) == -1);
  CHECK(bt__gcra_take(&g, now + 10000 * MS, 5) == 0);  /* idle long: a full burst, no more */
  CHECK(bt__gcra_wait(&g, now + 10000 * MS, 1) == 100 * MS);
  CHECK(bt__gcra_take(&g, now + 10000 * MS, 0) == 0);  /* cost 0 fits while the TAT holds */
}

static void test_adjust(void) {
  bt_gcra_t g;
  CHECK(bt__gcra_init(&g, 1000, 1000.0 * MS, 1000) == 0);  /* 1000 tokens/s */
  int64_t now = 0;
  CHECK(bt__gcra_take(&g, now, 800) == 0);        /* estimated 800 */
  CHECK(bt__gcra_available(&g, now) == 200);
  bt__gcra_adjust(&g, now, -600);                  /* it used 200: 600 back */
  CHECK(bt__gcra_available(&g, now) == 800);
  bt__gcra_adjust(&g, now, -5000);                 /* never more than the burst free */
  CHECK(bt__gcra_available(&g, now) == 1000 && g.tat == now);
  CHECK(bt__gcra_take(&g, now, 1000) == 0);
  bt__gcra_adjust(&g, now, 500);                   /* it used 1500: owed, whatever it costs */
  CHECK(bt__gcra_available(&g, now) == 0);
  CHECK(bt__gcra_wait(&g, now, 1) == 501 * MS);
  bt__gcra_adjust(&g, now + 5000 * MS, -10);       /* idle: giving back changes nothing */
  CHECK(bt__gcra_available(&g, now + 5000 * MS) == 1000);
}

/* A waiter served late takes as of when it fitted: no drift; one that arrived after that
 * moment takes as of its arrival. */
static void test_since(void) {
  bt_gcra_t g;
  CHECK(bt__gcra_init(&g, 10, 1000.0 * MS, 1) == 0);  /* one every 100 ms */
  int64_t t = 1000 * MS;
  CHECK(bt__gcra_take(&g, t, 1) == 0 && g.tat == t + 100 * MS);
  CHECK(bt__gcra_take_since(&g, t + 99 * MS, t, 1) == 1 * MS);  /* not yet */
  CHECK(bt__gcra_take_since(&g, t + 103 * MS, t, 1) == 0);       /* 3 ms late */
  CHECK(g.tat == t + 200 * MS);                                   /* as of t + 100 ms */
  CHECK(bt__gcra_take_since(&g, t + 5000 * MS, t + 4000 * MS, 1) == 0);
  CHECK(g.tat == t + 4100 * MS);                                  /* as of its arrival */
  int64_t w = bt__gcra_take(&g, t + 5000 * MS, 1);                /* a plain take: now */
  CHECK(w == 0 && g.tat == t + 5100 * MS);
}

/* Random takes at random times: over every window [a, b], the units taken within it never
 * exceed burst + rate * (b - a) / per, and every refused take fits exactly at its wait. */
static void test_random(void) {
  uint64_t s = 42;
  for (int round = 0; round < 50; round++) {
    s = s * 6364136223846793005u + 1442695040888963407u;
    double rate = (double)(1 + (s >> 33) % 50), burst = (double)(1 + (s >> 20) % 8);
    bt_gcra_t g;
    CHECK(bt__gcra_init(&g, rate, 1000.0 * MS, burst) == 0);
    int64_t now = 0, times[400];
    double costs[400];
    int n = 0;
    for (int i = 0; i < 400; i++) {
      s = s * 6364136223846793005u + 1442695040888963407u;
      now += (int64_t)((s >> 33) % (50 * MS));
      double cost = (double)(1 + (s >> 12) % (uint64_t)burst);
      int64_t w = bt__gcra_take(&g, now, cost);
      CHECK(w >= 0);
      if (w > 0) {
        CHECK(bt__gcra_take(&g, now + w - 1, cost) > 0);
        CHECK(bt__gcra_take(&g, now + w, cost) == 0);
        now += w;
      }
      times[n] = now;
      costs[n++] = cost;
    }
    for (int a = 0; a < n; a++) {
      double sum = 0;
      for (int b = a; b < n; b++) {
        sum += costs[b];
        double window = (double)(times[b] - times[a]);
        CHECK(sum <= burst + rate * window / (1000.0 * MS) + 1e-3);  /* rounding: < 1 ns a take */
      }
    }
  }
}

int main(void) {
  RUN(test_init);
  RUN(test_spacing);
  RUN(test_burst);
  RUN(test_adjust);
  RUN(test_since);
  RUN(test_random);
  return 0;
}
