/* leaktrace's demo workload: a pretend request handler that leaks steadily.
 *
 * Every request reads 4 KiB of "payload" (from /dev/urandom, so the process really does I/O),
 * parses it into temporary buffers that are freed (churn), and caches a session record that is
 * never evicted: remember_session() leaks 256 bytes per request, about 100 requests a second.
 * Usage: leaky-service [SECONDS] (default 15; 0 runs until killed). */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define NOINLINE __attribute__((noinline))

struct session {
    char id[32];
    char payload_digest[216];
    struct session *next;
};

static struct session *sessions; /* grows forever: the leak */

NOINLINE static void remember_session(const unsigned char *payload, size_t len) {
    struct session *s = malloc(sizeof *s);
    snprintf(s->id, sizeof s->id, "session-%02x%02x", payload[0], payload[1]);
    memcpy(s->payload_digest, payload, len < sizeof s->payload_digest ? len : sizeof s->payload_digest);
    s->next = sessions;
    sessions = s;
}

NOINLINE static size_t parse_headers(const unsigned char *payload, size_t len) {
    char *scratch = malloc(1024 + payload[0]); /* temporary: freed below */
    size_t n = 0;
    for (size_t i = 0; i < len && n < 1023; i++) scratch[n++] = (char)(payload[i] | 1);
    scratch[n] = 0;
    size_t result = strlen(scratch);
    free(scratch);
    return result;
}

NOINLINE static void handle_request(int source) {
    unsigned char *payload = malloc(4096);
    ssize_t got = read(source, payload, 4096);
    if (got > 0) {
        parse_headers(payload, (size_t)got);
        remember_session(payload, (size_t)got);
    }
    free(payload);
}

int main(int argc, char **argv) {
    int seconds = argc > 1 ? atoi(argv[1]) : 15;
    int source = open("/dev/urandom", O_RDONLY);
    if (source < 0) {
        perror("open /dev/urandom");
        return 1;
    }
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (;;) {
        handle_request(source);
        usleep(10000);
        clock_gettime(CLOCK_MONOTONIC, &now);
        if (seconds > 0 && now.tv_sec - start.tv_sec >= seconds) break;
    }
    close(source);
    return 0;
}
