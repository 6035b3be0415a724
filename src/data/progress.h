/* progress.h - a progress bar on stderr for long work (prep, eval).
 *
 * On a terminal: one line redrawn in place at most ten times a second
 * ("prep u.data [#####     ] 52%  1.2 s, eta 1.1 s"). Otherwise (a log
 * file, CI): one plain line per 10%. Work shorter than half a second prints
 * nothing; disabled, nothing either. Updating
 * is a compare and a return between redraws, cheap enough for every row.
 */
#ifndef HSTU_DATA_PROGRESS_H
#define HSTU_DATA_PROGRESS_H

#include <stdbool.h>
#include <stdint.h>

typedef struct progress {
    char label[96];
    uint64_t total;
    bool enabled, tty, drawn;
    int last_decile;      /* non-tty: last 10% step printed */
    double t0, next_draw; /* seconds */
    uint64_t next_check;  /* cheap gate: look at the clock only past this count */
} progress;

void progress_init(progress *p, const char *label, uint64_t total, bool enabled);
void progress_update(progress *p, uint64_t done);
/* Draws 100% and ends the line. */
void progress_finish(progress *p);
double progress_now(void); /* monotonic seconds */

#endif
