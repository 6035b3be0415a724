/* progress.c - the stderr progress bar. See progress.h. */
#include "data/progress.h"

#include "core/clock.h"

#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

double progress_now(void) { return core_now_s(); }

void progress_init(progress *p, const char *label, uint64_t total, bool enabled)
{
    memset(p, 0, sizeof *p);
    snprintf(p->label, sizeof p->label, "%s", label);
    p->total = total ? total : 1;
    p->enabled = enabled;
    p->tty = isatty(STDERR_FILENO);
    p->last_decile = 0;
    p->t0 = progress_now();
    p->next_draw = p->t0 + 0.5; /* short work draws nothing */
    p->drawn = false;
    p->next_check = p->total / 1000;
}

static void draw(progress *p, uint64_t done, double now, bool end)
{
    p->drawn = true;
    double frac = (double)done / (double)p->total;
    if (frac > 1)
        frac = 1;
    double el = now - p->t0;
    double eta = frac > 0 ? el * (1 - frac) / frac : 0;
    if (p->tty) {
        char bar[31];
        int fill = (int)(frac * 30);
        for (int i = 0; i < 30; i++)
            bar[i] = i < fill ? '#' : ' ';
        bar[30] = 0;
        fprintf(stderr, "\r%s [%s] %3d%%  %.1f s, eta %.1f s ", p->label, bar, (int)(frac * 100), el,
                end ? 0.0 : eta);
        if (end)
            fputc('\n', stderr);
    } else {
        fprintf(stderr, "%s: %d%% (%.1f s)\n", p->label, (int)(frac * 100), el);
    }
    fflush(stderr);
}

void progress_update(progress *p, uint64_t done)
{
    if (!p->enabled || done < p->next_check)
        return;
    p->next_check = done + p->total / 1000;
    if (p->tty) {
        double now = progress_now();
        if (now < p->next_draw)
            return;
        p->next_draw = now + 0.1;
        draw(p, done, now, false);
    } else {
        int dec = (int)(10.0 * (double)done / (double)p->total);
        if (dec > p->last_decile && dec < 10 && progress_now() >= p->next_draw) {
            p->last_decile = dec;
            draw(p, done, progress_now(), false);
        }
    }
}

void progress_finish(progress *p)
{
    if (!p->enabled)
        return;
    if (p->drawn)
        draw(p, p->total, progress_now(), true);
    p->enabled = false;
}
