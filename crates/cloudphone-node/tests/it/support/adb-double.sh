#!/bin/sh
# The adb double: answers the adb command lines the android runtime sends, keeping a device's
# state in files in the directory it is called from (a test links `<dir>/adb` to this script),
# and logs every call (one line of arguments each) to <dir>/log, so a test can see what the node
# asked of the device.
#   third      third-party packages, one a line (`pm list packages -3`, `pm uninstall`, `install`)
#   system     system packages, one a line (`pm list packages` lists both)
#   appdata/P  package P's data (`pm clear P` removes it)
#   sdcard/    the shared storage (`rm -rf /sdcard/*` empties it)
#   fail-clear packages whose `pm clear` answers "Failed" (a device that refuses the wipe)
#   snapshots  a snapshot load empties third, appdata and sdcard
# `exec-out screenrecord --size=WxH --time-limit=N …` writes a live H.264 test pattern (30 fps)
# on stdout and exits after N seconds (at most 180), as a device's screenrecord does.
set -u
S=$(dirname "$0")
printf '%s\n' "$*" >> "$S/log"
[ "${1:-}" = "-s" ] && shift 2
case "${1:-}" in
wait-for-device) exit 0 ;;
get-state) echo device; exit 0 ;;
install)
    shift; [ "$1" = "-r" ] && shift
    echo "com.tenant.$(basename "$1" | tr -cd 'a-z0-9')" >> "$S/third"; echo Success; exit 0 ;;
emu)
    if [ "$*" = "emu avd snapshot load clean" ]; then
        : > "$S/third"; rm -rf "$S/appdata"/* "$S/sdcard"/* "$S/sdcard"/.[!.]*; echo OK; exit 0
    fi
    echo "KO: unknown snapshot"; exit 0 ;;
exec-out)
    shift
    [ "${1:-}" = screenrecord ] || { echo "adb double: unknown exec-out $*" >&2; exit 1; }
    size=720x1280; limit=180
    for a in "$@"; do
        case "$a" in --size=*) size=${a#--size=} ;; --time-limit=*) limit=${a#--time-limit=} ;; esac
    done
    [ "$limit" -gt 180 ] && limit=180
    exec gst-launch-1.0 -q videotestsrc is-live=true pattern=ball num-buffers=$((limit * 30)) \
        ! "video/x-raw,width=${size%x*},height=${size#*x},framerate=30/1" \
        ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=60 \
        ! video/x-h264,stream-format=byte-stream ! fdsink fd=1 ;;
shell) shift ;;
*) echo "adb double: unknown command $*" >&2; exit 1 ;;
esac
cmd="$*"
pkg=$(printf '%s' "$cmd" | sed -n "s/^pm [a-z]* '\(.*\)'$/\1/p")
case "$cmd" in
"getprop sys.boot_completed") echo 1 ;;
"pm list packages -3") sed 's/^/package:/' "$S/third" ;;
"pm list packages") cat "$S/system" "$S/third" | sed 's/^/package:/' ;;
"pm uninstall "*)
    grep -vx "$pkg" "$S/third" > "$S/third.new"; mv "$S/third.new" "$S/third"
    rm -rf "$S/appdata/$pkg"; echo Success ;;
"pm clear "*)
    if grep -qx "$pkg" "$S/fail-clear" 2>/dev/null; then echo Failed; else rm -rf "$S/appdata/$pkg"; echo Success; fi ;;
"rm -rf /sdcard/* /sdcard/.[!.]*") rm -rf "$S/sdcard"/* "$S/sdcard"/.[!.]* ;;
*) sh -c "$cmd" ;;
esac
