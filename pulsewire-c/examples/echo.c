/* echo: connects to a pulsewire server that echoes (demo-server does by default), sends a
 * 100 KB message, checks that it comes back, sends a probe, then closes. Every event is printed
 * as one line, for the test that runs it (pulsewire-c/tests/c_example.rs).
 *
 *   echo HOST:PORT CLIENT_ID [RESUME_STATE_FILE [CONNECTS]]
 *
 * With CONNECTS > 1 it stays until it has been connected that many times (the server may be
 * restarted meanwhile), then closes. Exit status 0 once CLOSED arrives after a close. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pulsewire.h"

#define PAYLOAD_LEN (100 * 1024)

static void fail(const char *what, int32_t code) {
    char text[512];
    pulsewire_last_error(text, sizeof text);
    printf("error %s code=%d text=%s\n", what, (int)code, text);
    exit(1);
}

static void set(pulsewire_config *cfg, const char *key, const char *value) {
    int32_t code = pulsewire_config_set(cfg, key, value);
    if (code != PULSEWIRE_OK) fail(key, code);
}

static unsigned char pattern(size_t i) { return (unsigned char)((i * 31u) % 251u); }

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: echo HOST:PORT CLIENT_ID [RESUME_STATE_FILE [CONNECTS]]\n");
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    int want_connects = argc > 4 ? atoi(argv[4]) : 1;
    printf("abi major=%u minor=%u version=%s\n", (unsigned)(pulsewire_abi_version() >> 16),
           (unsigned)(pulsewire_abi_version() & 0xffff), pulsewire_version());

    pulsewire_config *cfg = pulsewire_config_new();
    if (cfg == NULL) fail("config_new", 0);
    set(cfg, "server", argv[1]);
    set(cfg, "client_id", argv[2]);
    set(cfg, "initial_delay_ms", "50");
    set(cfg, "max_delay_ms", "200");
    if (argc > 3 && argv[3][0] != '\0') set(cfg, "resume_state_file", argv[3]);
    if (pulsewire_config_set(cfg, "no_such_key", "1") != PULSEWIRE_E_CONFIG) fail("unknown key accepted", 0);

    pulsewire_client *client = NULL;
    int32_t code = pulsewire_client_new(cfg, &client);
    pulsewire_config_free(cfg);
    if (code != PULSEWIRE_OK) fail("client_new", code);
    code = pulsewire_client_start(client);
    if (code != PULSEWIRE_OK) fail("start", code);

    unsigned char *payload = malloc(PAYLOAD_LEN);
    for (size_t i = 0; i < PAYLOAD_LEN; i++) payload[i] = pattern(i);

    /* Start small: the first large event must grow the buffer (PULSEWIRE_E_BUFFER). */
    size_t cap = 16;
    unsigned char *data = malloc(cap);
    int connects = 0, echoed = 0, probed = 0, closing = 0;
    uint64_t ticket = 0, token = 0;
    for (;;) {
        code = pulsewire_wait(client, 20000);
        if (code == PULSEWIRE_EMPTY) {
            printf("error timeout waiting for an event\n");
            return 1;
        }
        if (code != PULSEWIRE_OK) fail("wait", code);
        pulsewire_event ev;
        memset(&ev, 0, sizeof ev);
        ev.struct_size = sizeof ev;
        code = pulsewire_poll(client, &ev, data, cap);
        if (code == PULSEWIRE_E_BUFFER) {
            printf("grow from=%zu to=%llu\n", cap, (unsigned long long)ev.data_len);
            cap = (size_t)ev.data_len;
            data = realloc(data, cap);
            code = pulsewire_poll(client, &ev, data, cap);
        }
        if (code == PULSEWIRE_EMPTY) continue;
        if (code != PULSEWIRE_OK) fail("poll", code);
        int len = (int)ev.data_len;
        switch (ev.kind) {
        case PULSEWIRE_EVENT_CONNECTING:
            printf("connecting attempt=%u\n", ev.attempt);
            break;
        case PULSEWIRE_EVENT_CONNECTED:
            connects++;
            printf("connected resumed=%u session=%.*s\n", ev.resumed, len, (const char *)data);
            if (connects == 1) {
                code = pulsewire_send(client, payload, PAYLOAD_LEN, &ticket);
                if (code != PULSEWIRE_OK) fail("send", code);
                printf("sent ticket=%llu len=%d\n", (unsigned long long)ticket, PAYLOAD_LEN);
                code = pulsewire_probe(client, &token);
                if (code != PULSEWIRE_OK) fail("probe", code);
            }
            break;
        case PULSEWIRE_EVENT_PULSE:
            printf("pulse seq=%llu\n", (unsigned long long)ev.seq);
            break;
        case PULSEWIRE_EVENT_MISSED:
            printf("missed count=%llu max=%u\n", (unsigned long long)ev.count, ev.max);
            break;
        case PULSEWIRE_EVENT_DISCONNECTED:
            printf("disconnected reason=%u text=%.*s\n", ev.reason, len, (const char *)data);
            break;
        case PULSEWIRE_EVENT_BACKING_OFF:
            printf("backing_off attempt=%u delay_ms=%llu reason=%u\n", ev.attempt,
                   (unsigned long long)ev.delay_ms, ev.reason);
            break;
        case PULSEWIRE_EVENT_MESSAGE: {
            int same = ev.data_len == PAYLOAD_LEN && memcmp(data, payload, PAYLOAD_LEN) == 0;
            printf("message seq=%llu len=%d echo=%s\n", (unsigned long long)ev.seq, len, same ? "ok" : "different");
            if (same) echoed = 1;
            break;
        }
        case PULSEWIRE_EVENT_DELIVERED:
            printf("delivered up_to=%llu count=%llu\n", (unsigned long long)ev.ticket, (unsigned long long)ev.count);
            break;
        case PULSEWIRE_EVENT_UNDELIVERED:
            printf("undelivered ticket=%llu\n", (unsigned long long)ev.ticket);
            break;
        case PULSEWIRE_EVENT_EXPIRED:
            printf("expired ticket=%llu\n", (unsigned long long)ev.ticket);
            break;
        case PULSEWIRE_EVENT_PROBE:
            if (ev.reason == PULSEWIRE_REASON_NONE) {
                printf("probe token=%llu answered rtt_us=%llu\n", (unsigned long long)ev.token,
                       (unsigned long long)ev.rtt_us);
                probed = ev.token == token;
            } else {
                printf("probe token=%llu failed reason=%u\n", (unsigned long long)ev.token, ev.reason);
            }
            break;
        case PULSEWIRE_EVENT_CLOSED:
            printf("closed reason=%u text=%.*s\n", ev.reason, len, (const char *)data);
            pulsewire_free(client);
            free(payload);
            free(data);
            return closing ? 0 : 1;
        default:
            printf("unknown kind=%u\n", ev.kind); /* hosts ignore kinds they do not know */
            break;
        }
        if (!closing && echoed && probed && connects >= want_connects) {
            pulsewire_state state;
            memset(&state, 0, sizeof state);
            state.struct_size = sizeof state;
            pulsewire_client_state(client, &state);
            printf("state kind=%u\n", state.kind);
            code = pulsewire_close(client);
            if (code != PULSEWIRE_OK) fail("close", code);
            printf("closing\n");
            closing = 1;
        }
    }
}
