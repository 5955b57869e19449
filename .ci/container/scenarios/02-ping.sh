# Every shipped service answers over TCP through io_conn and md: PING, echo, reverse.
source "$SHMSRV_LIB/lib.sh"
$CLIENT ping --port "$DUMB_PORT" --count 20
$CLIENT say --port "$DUMB_PORT" --send 'WAIT 10\nBURN 1000\n' --expect 'DONE\nRESULT 500500\n'
$CLIENT say --port "$ECHO_PORT" --send 'hello, echo' --expect 'hello, echo'
$CLIENT say --port "$REVERSE_PORT" --send 'hello\n' --expect 'olleh\n'
