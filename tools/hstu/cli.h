/* cli.h - shared pieces of the hstu command's subcommands. */
#ifndef HSTU_TOOLS_CLI_H
#define HSTU_TOOLS_CLI_H

#include "hstu.h"

#include <stdbool.h>
#include <stdio.h>

int cmd_init(int argc, char **argv);
int cmd_infer(int argc, char **argv);
int cmd_demo(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_serve(int argc, char **argv);
int cmd_loadgen(int argc, char **argv);
int cmd_prep(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_train(int argc, char **argv);

/* A request parsed from one JSON line, owning its arrays. */
typedef struct cli_request {
    hstu_request req;
    int64_t *buf;      /* all id arrays in one allocation */
    size_t buf_cap;
} cli_request;

/* Parses one JSON request line for the model's family into r (reusing its
 * buffer). On error fills err and returns its status. */
hstu_status cli_request_parse(const hstu_config *cfg, const char *line, size_t len, cli_request *r,
                              hstu_error *err);
void cli_request_free(cli_request *r);

/* Writes the JSON result line of one request. */
void cli_result_print(FILE *out, const hstu_config *cfg, const hstu_request *req,
                      const hstu_result *res);
/* Writes {"error": msg} with msg escaped. */
void cli_error_print(FILE *out, const char *msg);

/* Result storage for one request, sized for its candidates / top_k. */
hstu_status cli_result_alloc(const hstu_config *cfg, const hstu_request *req, hstu_result *res,
                             hstu_error *err);
void cli_result_free(hstu_result *res);

double cli_now_ms(void);
/* Peak resident memory of this process in MiB. */
double cli_peak_rss_mib(void);
/* Parses a non-negative integer option; exits with a message on error. */
long cli_parse_long(const char *opt, const char *s, long lo, long hi);
/* Parses a number in [lo, hi]; exits with a message on error. */
double cli_parse_double(const char *opt, const char *s, double lo, double hi);
/* For an option parsed by one of the library's hstu_*_parse: exits with
 * err's message (which lists the choices) unless st is HSTU_OK. */
void cli_parse_choice(const char *opt, hstu_status st, const hstu_error *err);

#endif
